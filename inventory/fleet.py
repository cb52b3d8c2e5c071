"""Reads of stock across many machines at once: how full each is and which slots run low.

Two queries whatever the number of machines (the Fleet stock page, ``/stock/``). Only the
slots that sell count: enabled, with a product. A slot is low when its quantity is at or below
its low-stock threshold (``Slot.is_low``) and empty at 0 (``Slot.is_empty``); an empty slot is
also low, so ``low`` lists both and ``empty`` is the part of it at 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce

from .models import Slot


@dataclass
class LowSlot:
    number: int
    product: str
    quantity: int
    fill_to: int

    @property
    def is_empty(self) -> bool:
        return self.quantity == 0


@dataclass
class MachineStock:
    """One machine's selling slots: units in them, units when filled, and the low ones."""

    slots: int = 0
    quantity: int = 0
    fill_to: int = 0
    low: list[LowSlot] = field(default_factory=list)

    @property
    def fill_percent(self) -> int | None:
        """Units in the machine as a whole percentage of its fill-to levels (PAR, else
        capacity), rounded down so a machine short of one unit never shows 100; ``None``
        when nothing in it sells."""
        if self.fill_to <= 0:
            return None
        return min(100, self.quantity * 100 // self.fill_to)

    @property
    def empty(self) -> list[LowSlot]:
        return [slot for slot in self.low if slot.is_empty]

    @property
    def low_only(self) -> list[LowSlot]:
        """The low slots that still hold something."""
        return [slot for slot in self.low if not slot.is_empty]


def selling_slots():
    return Slot.objects.filter(enabled=True, product__isnull=False)


def stock_by_machine(device_pks: Iterable[int]) -> dict[int, MachineStock]:
    """Per machine primary key in ``device_pks``, its :class:`MachineStock` (a machine with no
    selling slot gets an empty one). Two queries: the sums, then the low slots."""
    pks = list(device_pks)
    levels = {pk: MachineStock() for pk in pks}
    if not pks:
        return levels
    sums = (
        selling_slots()
        .filter(device_id__in=pks)
        .values("device_id")
        .annotate(
            slots=Count("pk"),
            units=Sum("quantity"),
            full=Sum(Coalesce("par", "capacity")),
        )
        .order_by()
    )
    for row in sums:
        stock = levels[row["device_id"]]
        stock.slots, stock.quantity, stock.fill_to = row["slots"], row["units"], row["full"]
    low = (
        selling_slots()
        .filter(device_id__in=pks, quantity__lte=F("low_stock_threshold"))
        .values_list("device_id", "number", "product__name", "quantity", "par", "capacity")
        .order_by("device_id", "number")
    )
    for device_pk, number, product, quantity, par, capacity in low:
        levels[device_pk].low.append(
            LowSlot(number, product, quantity, capacity if par is None else par)
        )
    return levels
