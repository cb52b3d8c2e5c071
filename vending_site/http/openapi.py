"""The OpenAPI 3 description of the server (drf-spectacular): schema class, hooks, and the
documentation-only serializers and examples the views' ``@extend_schema`` decorators use.

Served at ``/api/schema/`` (YAML, or JSON with ``?format=json``) and as Swagger UI at
``/api/docs/`` from drf-spectacular-sidecar's bundled files, so it works on an offline LAN.
Both are public: the schema lists paths the firmware and clients already use and holds no
secrets; every endpoint still enforces its own permissions.

Each app documents its own endpoints beside its views (``devices.api.docs``,
``transactions.api.docs``), with the shared pieces defined here. What is documented: the
REST API (``/api/v1/...``, the legacy ``/vend/<slot>``), device management
(``/esp32/devices/...``), ``/status``, ``/health`` and the firmware's wire protocol
(``/esp32/...``, both WiFi dialects) with the bodies of ``PROTOCOL.md`` as examples. What
is not: the dashboard's own JSON (``/dashboard/api/...``: session + CSRF, for the page that
ships with the server, not a contract), the admin and ``/metrics`` (Prometheus text).

Authentication schemes: JWT bearer and the session cookie (drf-spectacular knows those),
and an API key in ``Authorization: Api-Key <key>`` (:class:`APIKeyScheme`, for the
project's djangorestframework-api-key authentication class).

Error answers (``{"detail", "code"}``) are declared once each, in ``components/responses``
(:data:`ERROR_RESPONSES`), and operations refer to them (:class:`VendingAutoSchema`, the
schema class in settings). That class also adds 503 (database or Redis unreachable, with
``Retry-After``; see ``vending_site.backends.outages``) to every operation and 429 (throttled, with
``Retry-After``; see ``vending_site.http.throttling``) to every rate-limited one, so no view's
decorator has to remember them.
"""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers

API_KEY_SCHEME = "ApiKeyAuth"
API_KEY_SECURITY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "Authorization",
    "description": 'An API key, sent as "Authorization: Api-Key <key>".',
}
UNDOCUMENTED_PREFIXES = ("/dashboard/",)


class APIKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Api-Key <key>`` (djangorestframework-api-key keys)."""

    target_class = "vending_site.auth.permissions.APIKeyAuthentication"
    name = API_KEY_SCHEME

    def get_security_definition(self, auto_schema):
        return API_KEY_SECURITY_SCHEME


def exclude_undocumented(endpoints, **kwargs):
    """Preprocessing hook: leave out the dashboard page's private endpoints."""
    return [e for e in endpoints if not e[0].startswith(UNDOCUMENTED_PREFIXES)]


def mark_legacy(result, generator, request, public):
    """Postprocessing hook: the unversioned vend path is kept for old clients only."""
    for path, operations in result.get("paths", {}).items():
        if path.startswith("/vend/"):
            for operation in operations.values():
                operation["deprecated"] = True
    return result


# --- Shared bodies ------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """Every error body: a sentence for people and a stable code for programs."""

    detail = serializers.CharField()
    code = serializers.CharField()


class ValidationErrorSerializer(ErrorSerializer):
    # Only a refused body field has per-field messages; a bad path, header or query value
    # (slot 0, a missing Device-ID, a malformed device id) is a 400 without them.
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="The messages for each field that was refused (a refused body only).",
    )


@dataclass(frozen=True)
class ErrorResponse:
    """One error answer, declared once as a shared response (``components/responses``)."""

    name: str
    description: str
    example: dict
    retry_after: bool = False  # sent with a Retry-After header (seconds)


def _example(detail: str, code: str, **more) -> dict:
    return {"detail": detail, "code": code, **more}


_RETRY = "; retry after the seconds in Retry-After."
ERROR_RESPONSES = {
    400: ErrorResponse(
        "BadRequest",
        "The request is malformed or a field was refused.",
        _example(
            "slot: A valid integer is required.",
            "invalid",
            errors={"slot": ["A valid integer is required."]},
        ),
    ),
    401: ErrorResponse(
        "Unauthorized",
        "No valid credentials were sent.",
        _example("Authentication credentials were not provided.", "not_authenticated"),
    ),
    403: ErrorResponse(
        "Forbidden",
        "The credentials do not allow this.",
        _example("You do not have permission to perform this action.", "permission_denied"),
    ),
    404: ErrorResponse(
        "NotFound",
        "No such object.",
        _example("No device ESP32_000000000000 is registered.", "not_found"),
    ),
    409: ErrorResponse(
        "Conflict",
        "The request conflicts with the current state (out of stock, device offline, ...).",
        _example("Slot 3 is empty.", "out_of_stock"),
    ),
    422: ErrorResponse(
        "Unprocessable",
        "The request is well-formed but cannot be carried out.",
        _example("The request cannot be carried out.", "unprocessable"),
    ),
    429: ErrorResponse(
        "Throttled",
        "Too many requests from this caller" + _RETRY,
        _example("Request was throttled. Expected available in 12 seconds.", "throttled"),
        retry_after=True,
    ),
    503: ErrorResponse(
        "Unavailable",
        "The database or Redis cannot be reached (nothing was wrong with the request)" + _RETRY,
        _example("the database is unavailable, retry in 5 s", "database_unavailable"),
        retry_after=True,
    ),
}
# Added to operations by VendingAutoSchema, not listed in the views' decorators.
THROTTLED, UNAVAILABLE = 429, 503
RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}


def errors(*statuses: int) -> dict:
    """``responses`` entries for the given error statuses; :class:`VendingAutoSchema` puts a
    reference to the shared response (:data:`ERROR_RESPONSES`) in their place."""
    return {
        status: OpenApiResponse(
            ValidationErrorSerializer if status == 400 else ErrorSerializer,
            description=ERROR_RESPONSES[status].description,
        )
        for status in statuses
    }


def is_throttled(view) -> bool:
    """Whether any rate limit applies to ``view`` (DRF's, or a device view's early ones)."""
    return bool(view.get_throttles() or getattr(view, "early_throttle_classes", ()))


class VendingAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, with the error answers shared: each is declared once in
    ``components/responses`` and every operation refers to it. Every operation documents 503
    (an unreachable backend can meet any request) and every rate-limited one 429."""

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation.setdefault("responses", {})
        wanted = {
            int(code) for code in responses if code.isdigit() and int(code) in ERROR_RESPONSES
        }
        wanted.add(UNAVAILABLE)
        if is_throttled(self.view):
            wanted.add(THROTTLED)
        for status in sorted(wanted):
            own = responses.get(str(status))
            if own is not None and not self._is_error_body(own):
                continue  # an answer of the operation's own (the 503 of /health)
            responses[str(status)] = self._shared_response(status).ref
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _is_error_body(self, response: dict) -> bool:
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        refs = (self._error_schema(serializer) for serializer in ERROR_SERIALIZERS)
        return schema in list(refs)

    def _error_schema(self, serializer) -> dict:
        return self.resolve_serializer(serializer, "response").ref

    def _shared_response(self, status: int) -> ResolvedComponent:
        error = ERROR_RESPONSES[status]
        body = ValidationErrorSerializer if status == 400 else ErrorSerializer
        definition = {
            "description": error.description,
            "content": {
                "application/json": {
                    "schema": self._error_schema(body),
                    "examples": {error.name: {"value": error.example}},
                }
            },
        }
        if error.retry_after:
            definition["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
        component = ResolvedComponent(
            name=error.name, type=ResolvedComponent.RESPONSE, object=error.name, schema=definition
        )
        self.registry.register_on_missing(component)
        return component


ERROR_SERIALIZERS = (ErrorSerializer, ValidationErrorSerializer)
AUTHENTICATED = (401, 403)


class TokenObtainDocs(OpenApiViewExtension):
    """simplejwt's views: their 400 (a missing field) and 401 (wrong credentials) too."""

    target_class = "vending_site.auth.logins.TokenObtainView"

    def view_replacement(self):
        @extend_schema(
            tags=["auth"],
            responses={
                200: inline_serializer(
                    "TokenPair",
                    {"access": serializers.CharField(), "refresh": serializers.CharField()},
                ),
                **errors(400, 401),
            },
        )
        class Documented(self.target_class):
            pass

        return Documented


class TokenRefreshDocs(OpenApiViewExtension):
    target_class = "vending_site.auth.logins.TokenRefreshThrottledView"

    def view_replacement(self):
        # Refresh tokens are rotated (SIMPLE_JWT): a new pair comes back, and the refresh
        # token sent is blacklisted (a second use is 401).
        @extend_schema(
            tags=["auth"],
            description=(
                "A new access token and a new refresh token. The refresh token sent is "
                "spent: using it again is 401, as is any refresh token of a user whose "
                "password changed or who was deactivated since."
            ),
            responses={
                200: inline_serializer(
                    "RotatedTokenPair",
                    {"access": serializers.CharField(), "refresh": serializers.CharField()},
                ),
                **errors(400, 401),
            },
        )
        class Documented(self.target_class):
            pass

        return Documented


# --- /health -------------------------------------------------------------------------------


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "degraded", "unhealthy"])
    checks = serializers.DictField(child=serializers.CharField())


HEALTH = extend_schema(
    tags=["status"],
    summary="Can this server do its job? (database, migrations, channel layer)",
    responses={
        200: HealthSerializer,
        503: OpenApiResponse(HealthSerializer, description="At least one check failed."),
    },
)


class HealthViewDocs(OpenApiViewExtension):
    """``/health`` lives in a module of its own; documented here rather than edited there."""

    target_class = "vending_site.http.health.HealthView"

    def view_replacement(self):
        @HEALTH
        class Documented(self.target_class):
            pass

        return Documented
