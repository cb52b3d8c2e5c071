"""The OpenAPI 3 description of the server (drf-spectacular): schema class, hooks, and the
documentation-only serializers and examples the views' ``@extend_schema`` decorators use.

Served at ``/api/schema/`` (YAML, or JSON with ``?format=json``) and as Swagger UI at
``/api/docs/`` from drf-spectacular-sidecar's bundled files, so it works on an offline LAN.
Both are public: the schema lists paths the firmware and clients already use and holds no
secrets; every endpoint still enforces its own permissions.

What is documented: the REST API (``/api/v1/...``, the legacy ``/vend/<slot>``), device
management (``/esp32/devices/...``), ``/status``, ``/health`` and the firmware's wire protocol
(``/esp32/...``, both WiFi dialects) with the bodies of ``PROTOCOL.md`` as examples. What
is not: the dashboard's own JSON (``/dashboard/api/...``: session + CSRF, for the page that
ships with the server, not a contract), the admin and ``/metrics`` (Prometheus text).

Authentication schemes: JWT bearer and the session cookie (drf-spectacular knows those),
and an API key in ``Authorization: Api-Key <key>`` (:class:`APIKeyScheme`, for the
project's djangorestframework-api-key authentication class).

Error answers (``{"detail", "code"}``) are declared once each, in ``components/responses``
(:data:`ERROR_RESPONSES`), and operations refer to them (:class:`VendingAutoSchema`, the
schema class in settings). That class also adds 503 (database or Redis unreachable, with
``Retry-After``; see ``vending_site.outages``) to every operation and 429 (throttled, with
``Retry-After``; see ``vending_site.throttling``) to every rate-limited one, so no view's
decorator has to remember them.
"""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers

from devices.api.serializers import (
    AdmissionRequestSerializer,
    CommandRequestSerializer,
    DeviceRegistrationSerializer,
    DeviceSelectionSerializer,
    DeviceSerializer,
    VendConfirmationSerializer,
)
from inventory.api.serializers import SlotSerializer
from transactions.api.serializers import (
    TransactionDetailSerializer,
    TransactionSerializer,
    VendRequestSerializer,
)

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

    target_class = "vending_site.permissions.APIKeyAuthentication"
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


# --- The device protocol (PROTOCOL.md) ----------------------------------------------------

_WIRE_COMMAND = {
    "type": "object",
    "description": "One command. The firmware reads `command` and `slot` and ignores the "
    "other keys.",
    "properties": {
        "command": {"type": "string", "enum": ["VEND", "STATUS", "RESET"]},
        "slot": {"type": "integer", "minimum": 1, "description": "For VEND only."},
        "command_id": {"type": "integer"},
        "transaction_id": {"type": "string", "format": "uuid", "description": "For VEND."},
    },
    "required": ["command", "command_id"],
}
_VEND_COMMAND_EXAMPLE = OpenApiExample(
    "a vend",
    value={
        "command": "VEND",
        "slot": 3,
        "command_id": 41,
        "transaction_id": "6d1f7a9e-0c5b-4a53-9a43-2b8f1e0c7d11",
    },
    response_only=True,
)

DEVICE_REGISTER = extend_schema(
    tags=["device protocol"],
    summary="Register a machine (sent once after boot)",
    description="200 once the body is valid: the firmware treats any answer as success. "
    "Unknown fields are ignored (and logged). A new machine waits for staff approval "
    "(`DEVICE_APPROVAL_REQUIRED`). A request is 403 when it may not act for the machine it "
    "names: `device_bound_elsewhere` (an approved machine is served only from its own "
    "address), `device_linked_by_serial`, `browser_request_refused` (an `Origin`, a "
    "cross-site `Sec-Fetch-Site`, cookies or a form-encoded body), `too_many_pending` "
    "(`DEVICE_PENDING_LIMIT` machines already await approval).",
    request=DeviceRegistrationSerializer,
    responses={
        200: inline_serializer(
            "DeviceRegistered",
            {
                "status": serializers.CharField(),
                "device_id": serializers.CharField(),
                "created": serializers.BooleanField(),
                "slots": serializers.IntegerField(),
                "message": serializers.CharField(),
            },
        ),
        **errors(400, 403),
    },
    examples=[
        OpenApiExample(
            "firmware v2.1 (/esp32/register)",
            value={
                "device_id": "ESP32_6CC8404FE03C",
                "ip_address": "192.168.1.105",
                "status": "online",
                "slots_available": 5,
            },
            request_only=True,
        ),
        OpenApiExample(
            "documented variant (/esp32/wifi/register)",
            value={
                "device_id": "ESP32_6CC8404FE03C",
                "device_type": "wifi",
                "ip_address": "192.168.1.105",
                "firmware_version": "2.0",
                "slots_available": 5,
                "status": "online",
            },
            request_only=True,
        ),
        OpenApiExample(
            "registered",
            value={
                "status": "registered",
                "device_id": "ESP32_6CC8404FE03C",
                "created": True,
                "slots": 5,
                "message": "ESP32_6CC8404FE03C registered with 5 slots",
            },
            response_only=True,
        ),
    ],
)

DEVICE_POLL = extend_schema(
    tags=["device protocol"],
    summary="Poll for the next command (firmware v2.1, every ~2 s)",
    description="200 with the JSON `null` when there is nothing to do, else one command. Only "
    "VEND is delivered on this path (this firmware ignores everything else). A device that "
    "polls without having registered is registered on its first poll; an unknown id that does "
    "not start with `ESP32_` is 404 `unknown_device`. 403 as for registration (a machine bound "
    "to another address, linked by USB serial, a browser's request, too many pending).",
    parameters=[
        OpenApiParameter(
            "device_id",
            OpenApiTypes.STR,
            OpenApiParameter.PATH,
            description="`ESP32_` + the MAC without colons, e.g. `ESP32_6CC8404FE03C`.",
        )
    ],
    responses={
        (200, "application/json"): OpenApiResponse(
            {**_WIRE_COMMAND, "nullable": True},
            description="`null`, or one command.",
            examples=[
                OpenApiExample("idle", value=None, response_only=True),
                _VEND_COMMAND_EXAMPLE,
            ],
        ),
        **errors(400, 403, 404),
    },
)

DEVICE_POLL_DOCUMENTED = extend_schema(
    tags=["device protocol"],
    summary="Poll for the next command (documented WiFi variant)",
    description="The plain-text body `NO_COMMAND` when idle, else one JSON command "
    "(VEND, STATUS or RESET). An unknown id that does not start with `ESP32_` (or is not a "
    "MAC) is 404 `unknown_device`. 403 as for registration.",
    parameters=[
        OpenApiParameter(
            "Device-ID",
            OpenApiTypes.STR,
            OpenApiParameter.HEADER,
            required=True,
            description="The MAC with colons (`6C:C8:40:4F:E0:3C`) or the `ESP32_...` id.",
        )
    ],
    responses={
        (200, "application/json"): OpenApiResponse(
            _WIRE_COMMAND, description="One command.", examples=[_VEND_COMMAND_EXAMPLE]
        ),
        (200, "text/plain"): OpenApiResponse(
            OpenApiTypes.STR,
            description="Nothing to do.",
            examples=[OpenApiExample("idle", value="NO_COMMAND", response_only=True)],
        ),
        **errors(400, 403, 404),
    },
)

DEVICE_CONFIRM = extend_schema(
    tags=["device protocol"],
    summary="Confirm a vend (after the motor ran)",
    description="200 once the body is valid: the firmware cannot act on an error. The "
    "confirmation belongs to the oldest delivered, unconfirmed vend for that device and slot; "
    "`status` says whether one matched. 403 as for registration: only the machine's own "
    "address may confirm its vends.",
    request=VendConfirmationSerializer,
    responses={
        200: inline_serializer(
            "VendConfirmed",
            {
                "status": serializers.ChoiceField(choices=["ok", "ignored"]),
                "transaction_id": serializers.UUIDField(required=False),
                "state": serializers.CharField(required=False),
                "device_id": serializers.CharField(required=False),
                "message": serializers.CharField(required=False),
            },
        ),
        **errors(400, 403),
    },
    examples=[
        OpenApiExample(
            "firmware v2.1 (MAC with colons, ms since boot)",
            value={
                "device_id": "6C:C8:40:4F:E0:3C",
                "slot": 3,
                "success": True,
                "message": "Item dispensed successfully",
                "timestamp": 81234,
            },
            request_only=True,
        ),
        OpenApiExample(
            "documented variant, failed",
            value={
                "device_id": "ESP32_6CC8404FE03C",
                "slot": 3,
                "success": False,
                "message": "Motor jammed",
            },
            request_only=True,
        ),
        OpenApiExample(
            "matched",
            value={
                "status": "ok",
                "transaction_id": "6d1f7a9e-0c5b-4a53-9a43-2b8f1e0c7d11",
                "state": "succeeded",
            },
            response_only=True,
        ),
        OpenApiExample(
            "nothing awaited it",
            value={
                "status": "ignored",
                "device_id": "ESP32_6CC8404FE03C",
                "message": "no delivered vend awaits confirmation for slot 3",
            },
            response_only=True,
        ),
    ],
)


# --- Device management and status ---------------------------------------------------------


class DeviceListSerializer(serializers.Serializer):
    devices = DeviceSerializer(many=True)
    active_device = serializers.CharField(allow_null=True)


class ActiveDeviceSerializer(serializers.Serializer):
    status = serializers.CharField()
    active_device = serializers.CharField()


class StatusDeviceSerializer(DeviceSerializer):
    inventory = SlotSerializer(many=True, read_only=True)

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "inventory"]
        read_only_fields = fields


class StatusSerializer(serializers.Serializer):
    service = serializers.CharField()
    status = serializers.CharField()
    # Only for a vend client (staff, a vend-client API key or user); anonymous callers,
    # such as the firmware's probe, get the two fields above.
    active_device = serializers.CharField(allow_null=True, required=False)
    devices_online = serializers.IntegerField(required=False)
    devices = StatusDeviceSerializer(many=True, required=False)


class QueuedCommandSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    command = serializers.CharField()
    state = serializers.CharField()
    device_id = serializers.CharField()
    expires_at = serializers.DateTimeField()


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "degraded", "unhealthy"])
    checks = serializers.DictField(child=serializers.CharField())


DEVICE_LIST = extend_schema(
    tags=["devices"],
    summary="Every device with its online state, and the active one",
    responses={200: DeviceListSerializer, **errors(*AUTHENTICATED)},
)
DEVICE_SELECT = extend_schema(
    tags=["devices"],
    summary="Choose the active device (staff)",
    request=DeviceSelectionSerializer,
    responses={200: ActiveDeviceSerializer, **errors(400, *AUTHENTICATED, 404)},
    examples=[
        OpenApiExample("select", value={"device_id": "ESP32_6CC8404FE03C"}, request_only=True)
    ],
)
DEVICE_AUTO_SELECT = extend_schema(
    tags=["devices"],
    summary="Choose the active device automatically (staff)",
    description="A connected serial device first, then the most recently seen WiFi device. "
    "409 `no_device_online` when none is online.",
    request=None,
    responses={200: ActiveDeviceSerializer, **errors(*AUTHENTICATED, 409)},
)
DEVICE_ADMISSION = extend_schema(
    tags=["devices"],
    summary="Approve a machine, revoke it, or accept its move to a new address (staff)",
    description="`approve`: the machine may receive commands and is bound to the address its "
    "last request came from; its slots are created. `revoke`: no more commands, queued ones "
    "expire. `accept_move`: an approved machine is served from the address it asked from "
    "(409 when it asked from none). See docs/security.md.",
    request=AdmissionRequestSerializer,
    responses={200: DeviceSerializer, **errors(400, 404, 409)},
)
DEVICE_COMMAND = extend_schema(
    tags=["devices"],
    summary="Queue a STATUS or RESET command for a device (staff)",
    parameters=[OpenApiParameter("device_id", OpenApiTypes.STR, OpenApiParameter.PATH)],
    request=CommandRequestSerializer,
    responses={202: QueuedCommandSerializer, **errors(400, *AUTHENTICATED, 404, 409)},
    examples=[OpenApiExample("reset", value={"command": "RESET"}, request_only=True)],
)
STATUS = extend_schema(
    tags=["status"],
    summary="The firmware's server probe, and a summary of the fleet",
    description="The firmware accepts a server only if this answers 200 with a body "
    "containing `vending` or `status`. Anonymous callers get `service` and `status` only; "
    "the fleet (machines, their slots and stock) needs vend-client credentials.",
    responses={200: StatusSerializer},
)
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

    target_class = "vending_site.health.HealthView"

    def view_replacement(self):
        @HEALTH
        class Documented(self.target_class):
            pass

        return Documented


# --- Vends and transactions ---------------------------------------------------------------

VEND = extend_schema(
    tags=["vends"],
    summary="Vend one item from a slot",
    description="Reserves a unit and queues the vend; answers 202 with the transaction. With "
    "`wait` (seconds, up to VEND_MAX_WAIT) the answer is held until the vend settles: 200 "
    "with the settled transaction, or 202 when the wait ran out. Send an `Idempotency-Key` "
    "to make retries safe: a repeat gets the first answer again (`Idempotent-Replayed: "
    "true`).",
    parameters=[
        OpenApiParameter(
            "slot_id",
            {"type": "integer", "minimum": 1, "maximum": 10_000},
            OpenApiParameter.PATH,
            description="1..10000",
        ),
        OpenApiParameter(
            "Idempotency-Key",
            OpenApiTypes.STR,
            OpenApiParameter.HEADER,
            description="1 to 255 printable characters, unique per intended vend.",
        ),
    ],
    request=VendRequestSerializer,
    responses={
        200: OpenApiResponse(TransactionSerializer, description="Settled within `wait`."),
        202: OpenApiResponse(
            TransactionSerializer, description="Queued (or still in flight when `wait` ran out)."
        ),
        **errors(400, *AUTHENTICATED, 404, 409, 422),
    },
    examples=[
        OpenApiExample("the active device", value={}, request_only=True),
        OpenApiExample(
            "a named device, wait up to 5 s",
            value={"device_id": "ESP32_6CC8404FE03C", "wait": 5},
            request_only=True,
        ),
    ],
)
TRANSACTION_CANCEL = extend_schema(
    tags=["vends"],
    summary="Cancel a vend not yet delivered",
    description="409 once the machine has it.",
    parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
    request=None,
    responses={200: TransactionSerializer, **errors(*AUTHENTICATED, 404, 409)},
)
TRANSACTION_LIST = extend_schema(
    tags=["vends"],
    summary="Transactions, newest first (staff: all; others: their own)",
    responses={200: TransactionSerializer(many=True), **errors(400, *AUTHENTICATED)},
)


class TokenObtainDocs(OpenApiViewExtension):
    """simplejwt's views: their 400 (a missing field) and 401 (wrong credentials) too."""

    target_class = "vending_site.logins.TokenObtainView"

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
    target_class = "vending_site.logins.TokenRefreshThrottledView"

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


TRANSACTION_DETAIL = extend_schema(
    tags=["vends"],
    summary="One transaction with its state history",
    parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
    responses={200: TransactionDetailSerializer, **errors(*AUTHENTICATED, 404)},
)
