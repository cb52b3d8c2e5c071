"""The planogram over REST (staff): a machine's slots, one slot's edit, and a restock.
Thin: validate the body, call one service (``inventory.services``), answer the slots.

Reading needs ``inventory.view_slot``, an edit ``inventory.change_slot`` (and
``inventory.change_price`` when the body names a price), a restock ``inventory.restock_slot``.
A Driver reaches only the machines of their routes (404 for the others); prices are shown
only to those who see money (``roles.sees_prices``), null for the others."""

from django.db.models import QuerySet
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device
from devices.selectors import get_visible_device
from inventory.models import Slot
from inventory.services import restock, update_slot
from vending_site.auth.permissions import lacks
from vending_site.auth.roles import requires, sees_prices
from vending_site.http.errors import NotFound

from . import docs
from .serializers import (
    PlanogramSerializer,
    PlanogramSlotSerializer,
    RestockRequestSerializer,
    SlotUpdateSerializer,
    without_prices,
)


def _slots_of(device: Device) -> QuerySet[Slot]:
    return Slot.objects.filter(device=device).select_related("product").order_by("number")


def _planogram(device: Device, user) -> Response:
    data = PlanogramSerializer({"device_id": device.device_id, "slots": _slots_of(device)}).data
    return Response(data if sees_prices(user) else without_prices(data))


class MachineSlotsView(APIView):
    """``GET /api/v1/machines/<device_id>/slots``: the machine's planogram."""

    permission_classes = (requires("inventory.view_slot"),)

    @docs.MACHINE_SLOTS
    def get(self, request: Request, device_id: str) -> Response:
        return _planogram(get_visible_device(device_id, request.user), request.user)


class MachineSlotView(APIView):
    """``PATCH /api/v1/machines/<device_id>/slots/<number>``: change one slot's planogram."""

    permission_classes = (requires("inventory.change_slot"),)

    @docs.MACHINE_SLOT_UPDATE
    def patch(self, request: Request, device_id: str, number: str) -> Response:
        if isinstance(request.data, dict) and "price" in request.data:
            if not request.user.has_perm("inventory.change_price"):
                raise PermissionDenied(lacks("inventory.change_price"), code="permission_denied")
        device = get_visible_device(device_id, request.user)
        serializer = SlotUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        slot = _slots_of(device).filter(number=int(number)).first() if len(number) <= 5 else None
        if slot is None:
            raise NotFound(f"{device.device_id} has no slot {number[:20]}.", slot_id=number[:20])
        slot.device = device
        update_slot(slot=slot, changes=serializer.validated_data, user=request.user)
        slot = _slots_of(device).get(pk=slot.pk)
        data = PlanogramSlotSerializer(slot).data
        return Response(data if sees_prices(request.user) else without_prices(data))


class MachineRestockView(APIView):
    """``POST /api/v1/machines/<device_id>/restock``: record the units loaded per slot."""

    permission_classes = (requires("inventory.restock_slot"),)

    @docs.MACHINE_RESTOCK
    def post(self, request: Request, device_id: str) -> Response:
        device = get_visible_device(device_id, request.user)
        serializer = RestockRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        restock(
            device=device,
            loaded=serializer.validated_data["loaded"],
            user=request.user,
            note=serializer.validated_data["note"],
        )
        return _planogram(device, request.user)
