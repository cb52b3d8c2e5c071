"""The JSON parser every endpoint uses."""

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """A body that cannot be handled safely is a parse error (400), never a crash (500):
    JSON nested too deeply for the decoder, or text with lone UTF-16 surrogates (``\\ud800``),
    which no database column or UTF-8 response can hold."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError(
                "JSON parse error - the body contains text that is not valid Unicode "
                "(a lone surrogate escape such as \\ud800)."
            ) from None
        return data
