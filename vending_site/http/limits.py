"""Request size limits: an oversized body is refused with 413 and a message, never a 500.

``DATA_UPLOAD_MAX_MEMORY_SIZE`` is the one limit (``MAX_REQUEST_BODY``). Django checks it
only when ``request.body`` is read, and then raises an error Django turns into a 400 with a
logged traceback; the DRF JSON parser reads the stream and does not check it at all. So the
middleware refuses a declared ``Content-Length`` over the limit before any view runs, and
the parser (``vending_site.http.parsers``) stops reading at the limit whatever was declared.

A body sent ``Transfer-Encoding: chunked`` declares no length. Django's WSGI request reads
such a body as empty and DRF ignores a body without a ``Content-Length``, while the ASGI
handler's ``request.body`` raises at the limit; so the middleware reads it here, at most one
byte past the limit, and either refuses it with the same 413 or hands it on with its length
set, as if it had been sent with one. Anything that still meets Django's own limit check answers
the same JSON 413 (``process_exception``), never a 400 and a traceback.
"""

import io

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.wsgi import WSGIRequest
from django.http import JsonResponse
from django.utils.deprecation import MiddlewareMixin
from rest_framework import status
from rest_framework.exceptions import APIException


def max_body() -> int:
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


def too_large_message(limit: int) -> str:
    return f"The request body is too large: at most {limit} bytes are accepted."


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"
    default_detail = "The request body is too large."


def too_large_response(limit: int) -> JsonResponse:
    return JsonResponse(
        {"detail": too_large_message(limit), "code": "request_too_large"}, status=413
    )


def _chunked(request) -> bool:
    return "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()


def _take_unlengthed_body(request, limit: int) -> JsonResponse | None:
    """Read a body sent without a length (at most ``limit`` + 1 bytes): a 413 when it is
    larger than ``limit``, else ``None`` with the request carrying it and its length."""
    if isinstance(request, WSGIRequest):
        # PEP 3333 lets an application read wsgi.input past CONTENT_LENGTH only when the
        # server says the stream ends with the body (granian does).
        if not request.META.get("wsgi.input_terminated"):
            return JsonResponse(
                {"detail": "A request body needs a Content-Length header.", "code": "invalid"},
                status=411,
            )
        stream = request.META["wsgi.input"]
    else:
        stream = request._stream  # the ASGI handler has already buffered the whole body
    data = stream.read(limit + 1) if limit else stream.read()
    if limit and len(data) > limit:
        return too_large_response(limit)
    # As if it had come with a Content-Length: Django's body and DRF's parsers read it.
    request._stream = io.BytesIO(data)
    request.META["CONTENT_LENGTH"] = str(len(data))
    return None


class RequestSizeLimitMiddleware(MiddlewareMixin):
    def process_request(self, request):
        limit = max_body()
        if not request.META.get("CONTENT_LENGTH") and _chunked(request):
            return _take_unlengthed_body(request, limit)
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            return JsonResponse(
                {"detail": "The Content-Length header is not a byte count.", "code": "invalid"},
                status=400,
            )
        if limit and length > limit:
            return too_large_response(limit)
        return None

    def process_exception(self, request, exception):
        # Django's own check (request.body) of a body this middleware could not measure.
        if isinstance(exception, RequestDataTooBig):
            return too_large_response(max_body())
        return None
