"""Request size limits: an oversized body is refused with 413 and a message, never a 500.

``DATA_UPLOAD_MAX_MEMORY_SIZE`` is the one limit (``MAX_REQUEST_BODY``). Django checks it
only when ``request.body`` is read, and then raises an error Django turns into a 400; the
DRF JSON parser reads the stream and does not check it at all. So the middleware refuses a
declared ``Content-Length`` over the limit before any view runs, and the parser
(``vending_site.parsers``) stops reading at the limit for a body that did not declare one.
"""

from django.conf import settings
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


class RequestSizeLimitMiddleware(MiddlewareMixin):
    def process_request(self, request):
        limit = max_body()
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
            return JsonResponse(
                {"detail": too_large_message(limit), "code": "request_too_large"}, status=413
            )
        return None
