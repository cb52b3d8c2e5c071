"""Device management for REST clients and the dashboard, plus ``/status``."""

from django.db.models import Prefetch
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.api import docs
from devices.api.throttles import DeviceAddressThrottle, DeviceThrottle
from devices.approval import accept_address, set_approved
from devices.choices import CommandKind
from devices.models import Device
from devices.selectors import get_device, machines_visible_to
from devices.services import auto_select_active_device, select_active_device
from inventory.api.serializers import SlotSerializer, without_prices
from inventory.models import Slot
from transactions.commands import queue_command
from vending_site.auth.permissions import IsVendClient, is_staff, is_vend_client
from vending_site.auth.roles import requires, sees_prices

from .device_views import FirstRenderer
from .serializers import (
    AdmissionRequestSerializer,
    CommandRequestSerializer,
    DeviceSelectionSerializer,
    DeviceSerializer,
)


def _devices_with_slots(user):
    slots = Slot.objects.select_related("product").order_by("number")
    return (
        machines_visible_to(user)
        .prefetch_related(Prefetch("slots", queryset=slots))
        .order_by("device_id")
    )


class DeviceListView(APIView):
    """``GET /esp32/devices/list``: every device with its online state, and the active one."""

    permission_classes = (IsVendClient,)

    @docs.DEVICE_LIST
    def get(self, request: Request) -> Response:
        devices = list(machines_visible_to(request.user).order_by("device_id"))
        active = next((d.device_id for d in devices if d.is_active), None)
        return Response(
            {"devices": DeviceSerializer(devices, many=True).data, "active_device": active}
        )


class DeviceSelectView(APIView):
    """``POST /esp32/devices/select`` with ``{"device_id": ...}``: staff pick the active device."""

    permission_classes = (requires("devices.operate_device"),)

    @docs.DEVICE_SELECT
    def post(self, request: Request) -> Response:
        serializer = DeviceSelectionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device = select_active_device(device=get_device(serializer.validated_data["device_id"]))
        return Response({"status": "selected", "active_device": device.device_id})


class DeviceAutoSelectView(APIView):
    """``POST /esp32/devices/auto-select``: a connected serial device first, then the most
    recently seen WiFi device."""

    permission_classes = (requires("devices.operate_device"),)

    @docs.DEVICE_AUTO_SELECT
    def post(self, request: Request) -> Response:
        device = auto_select_active_device()
        if device is None:
            return Response(
                {"detail": "No device is online to select.", "code": "no_device_online"},
                status=409,
            )
        return Response({"status": "selected", "active_device": device.device_id})


class DeviceAdmissionView(APIView):
    """``POST /api/v1/devices/<id>/admission`` with ``{"action": "approve" | "revoke" |
    "accept_move"}`` (staff): the admin's actions, for apps and scripts."""

    permission_classes = (requires("devices.change_device"),)

    @docs.DEVICE_ADMISSION
    def post(self, request: Request, device_id: str) -> Response:
        serializer = AdmissionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device = get_device(device_id)
        action = serializer.validated_data["action"]
        expected = serializer.validated_data.get("address")
        if action == "accept_move":
            accept_address(device=device, expected_address=expected)
        else:
            set_approved(
                devices=Device.objects.filter(pk=device.pk),
                approved=action == "approve",
                expected_address=expected,
            )
        device.refresh_from_db()
        return Response(DeviceSerializer(device).data)


class DeviceCommandView(APIView):
    """``POST /api/v1/devices/<id>/commands`` with ``{"command": "STATUS"|"RESET"}`` (staff)."""

    permission_classes = (requires("devices.operate_device"),)

    @docs.DEVICE_COMMAND
    def post(self, request: Request, device_id: str) -> Response:
        serializer = CommandRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        command = queue_command(
            device=get_device(device_id), kind=CommandKind(serializer.validated_data["command"])
        )
        return Response(
            {
                "id": command.pk,
                "command": command.kind,
                "state": command.state,
                "device_id": command.device.device_id,
                "expires_at": command.expires_at,
            },
            status=202,
        )


class StatusView(APIView):
    """``GET /status``: the firmware's server probe, and a summary of the fleet.

    The probe needs HTTP 200 and a body containing ``vending`` or ``status``; it sends no
    credentials and gets a short constant answer that reads nothing from the database, so
    anonymous callers cannot make it grow with the fleet. A vend client (a JWT, a
    vend-client API key, a staff session) gets every machine with its slots.
    """

    permission_classes = (AllowAny,)
    # The firmware's probe: limited like a device (generous), never like an anonymous client.
    throttle_classes = (DeviceThrottle, DeviceAddressThrottle)
    content_negotiation_class = FirstRenderer  # a 406 would fail the probe

    @docs.STATUS
    def get(self, request: Request) -> Response:
        if not is_vend_client(request):
            return Response({"service": "vending", "status": "ok"})
        devices = list(_devices_with_slots(request.user))
        active = next((d.device_id for d in devices if d.is_active), None)
        body = {
            "service": "vending",
            "status": "ok",
            "active_device": active,
            "devices_online": sum(1 for d in devices if d.is_online),
            "devices": [
                {
                    **DeviceSerializer(device).data,
                    "inventory": SlotSerializer(device.slots.all(), many=True).data,
                }
                for device in devices
            ],
        }
        # A vend client sees what a vend costs; staff see money only with a role that does.
        if is_staff(request) and not sees_prices(request.user):
            body = without_prices(body)
        return Response(body)
