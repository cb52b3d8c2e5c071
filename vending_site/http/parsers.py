"""The JSON parser every endpoint uses."""

import io
import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from vending_site.http.limits import RequestTooLarge, max_body, too_large_message


class SafeJSONParser(JSONParser):
    """A body that cannot be handled safely is a parse error (400), never a crash (500):
    JSON nested too deeply for the decoder, or text with lone UTF-16 surrogates (``\\ud800``),
    which no database column or UTF-8 response can hold."""

    def parse(self, stream, media_type=None, parser_context=None):
        # Django checks DATA_UPLOAD_MAX_MEMORY_SIZE only for `request.body`, not for the stream
        # DRF reads; so stop at the limit here (413), whatever Content-Length claimed.
        limit = max_body()
        if limit:
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise RequestTooLarge(too_large_message(limit))
            stream = io.BytesIO(raw)
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
