"""Reads of stock."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from django.db.models import F, QuerySet

from .models import Slot

if TYPE_CHECKING:
    from devices.models import Device


def low_stock_slots(*, device: Device | None = None) -> QuerySet[Slot]:
    """Slots with a product whose quantity is at or below their low-stock threshold.

    The same rule as ``Slot.is_low``. Ordered by device id, then slot number; device and
    product come in the same query, so reading them costs nothing more.
    """
    slots = Slot.objects.filter(
        product__isnull=False, quantity__lte=F("low_stock_threshold")
    ).select_related("device", "product")
    if device is not None:
        slots = slots.filter(device=device)
    return slots.order_by("device__device_id", "number")


def price_of(slot: Slot) -> Decimal:
    """What a vend from ``slot`` charges: its own price if set, else its product's.

    The one place this rule lives; the vend copies the result onto its transaction.
    """
    if slot.price is not None:
        return slot.price
    return slot.product.price
