"""The OpenAPI description of the device endpoints: the firmware's wire protocol (PROTOCOL.md,
both WiFi dialects, with its bodies as examples), device management and ``/status``. Used as
decorators by ``devices.api.device_views`` and ``devices.api.views``; the shared pieces
(error answers, the schema class) are ``vending_site.http.openapi``."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers

from inventory.api.serializers import SlotSerializer
from vending_site.http.openapi import AUTHENTICATED, errors

from .fleet_serializers import (
    LocationSerializer,
    MachineSerializer,
    MachineUpdateSerializer,
    RouteSerializer,
)
from .serializers import (
    AdmissionRequestSerializer,
    CommandRequestSerializer,
    DeviceRegistrationSerializer,
    DeviceSelectionSerializer,
    DeviceSerializer,
    VendConfirmationSerializer,
)

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


# --- Locations, routes and machines (devices.api.fleet_views) -----------------------------

_FLEET_ROLES = (
    " Reads need the model's `devices.view_*` permission, creating `add_*`, changing "
    "`change_*`, deleting `delete_*` (roles: docs/operations.md); a Driver sees only the "
    "routes they drive and the locations and machines on them (anything else is 404)."
)
_PK = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)
_MACHINE = OpenApiParameter(
    "device_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="The machine's id, e.g. `ESP32_6CC8404FE03C` (any spelling of its MAC).",
)
_LOCATION_EXAMPLE = OpenApiExample(
    "a lobby",
    value={
        "name": "North lobby",
        "address": "1 Main Street",
        "latitude": 52.52,
        "longitude": 13.405,
        "contact": "Reception, +49 30 1234",
        "notes": "Badge at the desk",
    },
    request_only=True,
)

LOCATION_LIST = extend_schema(
    tags=["fleet"],
    summary="Locations, by name, with the machines standing there",
    description="Paginated (`limit`, `offset`)." + _FLEET_ROLES,
    responses={200: LocationSerializer(many=True), **errors(400, *AUTHENTICATED)},
)
LOCATION_CREATE = extend_schema(
    tags=["fleet"],
    summary="Create a location",
    description="`latitude` and `longitude` are given together or not at all (400 naming "
    "the missing one), within -90..90 and -180..180 (400 naming the field). A name is "
    "unique (400, or 409 `name_taken` when another request took it meanwhile)." + _FLEET_ROLES,
    request=LocationSerializer,
    responses={201: LocationSerializer, **errors(400, *AUTHENTICATED, 409)},
    examples=[_LOCATION_EXAMPLE],
)
LOCATION_READ = extend_schema(
    tags=["fleet"],
    summary="One location",
    description=_FLEET_ROLES.strip(),
    parameters=[_PK],
    responses={200: LocationSerializer, **errors(*AUTHENTICATED, 404)},
)
LOCATION_UPDATE = extend_schema(
    tags=["fleet"],
    summary="Change a location's fields",
    description="Only the fields sent change; after the change the coordinates are both set "
    "or both null (send both null to clear them). `machines` is read-only: move a machine "
    "with `PATCH /api/v1/machines/{device_id}`." + _FLEET_ROLES,
    parameters=[_PK],
    request=LocationSerializer,
    responses={200: LocationSerializer, **errors(400, *AUTHENTICATED, 404, 409)},
)
LOCATION_DELETE = extend_schema(
    tags=["fleet"],
    summary="Delete a location",
    description="Its machines stay, placed nowhere; it leaves the routes it was on (the "
    "stops after it move up)." + _FLEET_ROLES,
    parameters=[_PK],
    responses={204: None, **errors(*AUTHENTICATED, 404)},
)

_ROUTE_EXAMPLE = OpenApiExample(
    "Monday", value={"name": "Monday", "driver": 7, "stops": [3, 1, 2]}, request_only=True
)
ROUTE_LIST = extend_schema(
    tags=["fleet"],
    summary="Routes, by name, each with its driver and ordered stops",
    description="Paginated (`limit`, `offset`)." + _FLEET_ROLES,
    responses={200: RouteSerializer(many=True), **errors(400, *AUTHENTICATED)},
)
ROUTE_CREATE = extend_schema(
    tags=["fleet"],
    summary="Create a route",
    description="`driver`: a staff account holding the Driver or Operator role, or null "
    "(422 `not_a_driver` otherwise). `stops`: location ids in the order of visits; a "
    "location twice, or one that does not exist, is 400 naming it." + _FLEET_ROLES,
    request=RouteSerializer,
    responses={201: RouteSerializer, **errors(400, *AUTHENTICATED, 409, 422)},
    examples=[_ROUTE_EXAMPLE],
)
ROUTE_READ = extend_schema(
    tags=["fleet"],
    summary="One route",
    description=_FLEET_ROLES.strip(),
    parameters=[_PK],
    responses={200: RouteSerializer, **errors(*AUTHENTICATED, 404)},
)
ROUTE_UPDATE = extend_schema(
    tags=["fleet"],
    summary="Change a route: name, driver, notes, or the whole order of its stops",
    description="Only the fields sent change. `stops` replaces the whole order in one "
    "database transaction (nothing changes when it is refused)." + _FLEET_ROLES,
    parameters=[_PK],
    request=RouteSerializer,
    responses={200: RouteSerializer, **errors(400, *AUTHENTICATED, 404, 409, 422)},
    examples=[
        OpenApiExample("reorder", value={"stops": [2, 1]}, request_only=True),
        OpenApiExample("no driver", value={"driver": None}, request_only=True),
    ],
)
ROUTE_DELETE = extend_schema(
    tags=["fleet"],
    summary="Delete a route (its locations and machines stay)",
    description=_FLEET_ROLES.strip(),
    parameters=[_PK],
    responses={204: None, **errors(*AUTHENTICATED, 404)},
)

MACHINE_LIST = extend_schema(
    tags=["fleet"],
    summary="Machines, by id, with where they stand",
    description="`location=<id>` (or `none`: placed nowhere) and `route=<id>` (machines at "
    "the route's locations) narrow the list; a malformed value is 400. Paginated." + _FLEET_ROLES,
    parameters=[
        OpenApiParameter(
            "location", OpenApiTypes.STR, description="A location id, or `none`.", required=False
        ),
        OpenApiParameter("route", OpenApiTypes.INT, description="A route id.", required=False),
    ],
    responses={200: MachineSerializer(many=True), **errors(400, *AUTHENTICATED)},
)
MACHINE_READ = extend_schema(
    tags=["fleet"],
    summary="One machine",
    description="Its slots are `GET /api/v1/machines/{device_id}/slots`." + _FLEET_ROLES,
    parameters=[_MACHINE],
    responses={200: MachineSerializer, **errors(400, *AUTHENTICATED, 404)},
)
MACHINE_UPDATE = extend_schema(
    tags=["fleet"],
    summary="Rename a machine or move it to another location",
    description="Only `name` and `location` (an id, or null) may be sent; any other field "
    "is 400 naming it. Moving a machine moves its sales history with it: reports group by "
    "where a machine stands now." + _FLEET_ROLES,
    parameters=[_MACHINE],
    request=MachineUpdateSerializer,
    responses={200: MachineSerializer, **errors(400, *AUTHENTICATED, 404)},
    examples=[OpenApiExample("move", value={"location": 3}, request_only=True)],
)
