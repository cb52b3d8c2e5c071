"""Domain errors and the single place where they become HTTP answers.

Services raise a subclass of :class:`DomainError`; they know nothing of HTTP. The DRF
exception handler below turns every error into ``{"detail": message, "code": code}`` with
the status the error class names, so each rule's message is written once. A database or
Redis that cannot be reached is 503 with ``Retry-After`` (see ``vending_site.backends.outages``).
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from vending_site.backends import outages


class DomainError(Exception):
    """A request the domain refuses, with a message for the person who made it."""

    status_code: int = status.HTTP_409_CONFLICT
    code: str = "conflict"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(DomainError):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"


class NotFound(DomainError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Unprocessable(DomainError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "unprocessable"


def exception_handler(exc: Exception, context: dict) -> Response | None:
    backend = outages.unavailable_backend(exc)
    if backend is not None:
        outages.log_outage(backend, exc)
        return Response(
            outages.outage_body(backend),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(outages.retry_after())},
        )
    if isinstance(exc, DomainError):
        body: dict[str, Any] = {"detail": exc.message, "code": exc.code}
        body.update(exc.details)
        return Response(body, status=exc.status_code)
    if isinstance(exc, exceptions.ValidationError):
        return Response(
            {"detail": _summarise(exc.detail), "code": "invalid", "errors": exc.detail},
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        detail = exc.detail
        if isinstance(detail, dict):  # e.g. simplejwt's {"detail": ..., "messages": [...]}
            detail = detail.get("detail", _summarise(detail))
        response.data = {"detail": str(detail), "code": _code_of(exc)}
    elif response is not None and isinstance(exc, (Http404, PermissionDenied)):
        response.data = {
            "detail": str(response.data.get("detail", "")),
            "code": "not_found" if isinstance(exc, Http404) else "permission_denied",
        }
    return response


# Paths whose clients read JSON errors: a URL no route matches answers there like a view's 404.
JSON_PATH_PREFIXES = ("/api/", "/esp32/", "/vend/")


def page_not_found(request, exception):
    """``handler404``: ``{"detail", "code": "not_found"}`` on the API and device paths (a
    malformed transaction id, a device id with a slash), Django's page everywhere else."""
    if request.path.startswith(JSON_PATH_PREFIXES):
        return JsonResponse(
            {"detail": f"No such path: {request.path[:200]}", "code": "not_found"}, status=404
        )
    return defaults.page_not_found(request, exception)


def _code_of(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def _summarise(detail: Any, prefix: str = "") -> str:
    """One readable sentence out of DRF's nested error structure."""
    if isinstance(detail, dict):
        parts = [_summarise(value, f"{key}: ") for key, value in detail.items()]
        return "; ".join(p for p in parts if p)
    if isinstance(detail, list):
        return "; ".join(_summarise(item, prefix) for item in detail)
    return f"{prefix}{detail}"
