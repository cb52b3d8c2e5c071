"""Copying one machine's planogram onto others (a new machine set up like its neighbour, a
route's machines brought into line). Kept beside ``services.py``, whose rules it calls."""

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction as db_transaction

from .exceptions import PlanogramCopyRefused
from .models import Slot
from .services import set_price

# What a copy carries from a source slot to the target slot of the same number. Never the
# quantity (the units in a machine are counted, not copied) and never the place itself.
COPIED_FIELDS = ("product", "capacity", "par", "low_stock_threshold")


@dataclass
class CopiedPlanogram:
    """What a copy did to one target machine: the slot numbers it set, the source's slot
    numbers the target lacks (left out, never created) and the price changes it recorded."""

    device_id: str
    copied: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    price_changes: int = 0


@db_transaction.atomic
def copy_planogram(
    *, source_device, targets: Iterable, user: AbstractBaseUser | None = None
) -> list[CopiedPlanogram]:
    """Copy ``source_device``'s planogram onto each of ``targets``, slot number by slot
    number: product, capacity, PAR, low-stock threshold and price override (a changed
    override recorded through :func:`set_price`, with ``user``). Never the quantity.

    Only slots the target has are set; the source's other numbers are reported as
    ``skipped``, and the target's slots beyond the source's are left as they are. If a
    target slot holds more units than the capacity it would get, :class:`PlanogramCopyRefused`
    names every such slot (``slots``: device id -> slot -> reason) and nothing is written;
    likewise if a target slot holds units and would get another product (those units would
    become the new product without a ledger row: they are sold or counted out first).
    The target slots are locked in primary-key order, as every multi-slot writer must.
    """
    targets = list({t.pk: t for t in targets if t.pk != source_device.pk}.values())
    source = {
        slot.number: slot
        for slot in Slot.objects.filter(device=source_device).select_related("product")
    }
    locked = list(
        Slot.objects.select_for_update(of=("self",))
        .filter(device__in=[t.pk for t in targets], number__in=list(source))
        .order_by("pk")
    )
    by_device: dict[int, dict[int, Slot]] = {}
    for slot in locked:
        by_device.setdefault(slot.device_id, {})[slot.number] = slot
    problems: dict[str, dict[str, str]] = {}
    for target in targets:
        for number, slot in sorted(by_device.get(target.pk, {}).items()):
            reason = _refusal(slot, source[number], target.device_id)
            if reason:
                problems.setdefault(target.device_id, {})[str(number)] = reason
    if problems:
        first = next(iter(next(iter(problems.values())).values()))
        count = sum(len(slots) for slots in problems.values())
        more = f" ({count - 1} more slot(s) refused)" if count > 1 else ""
        raise PlanogramCopyRefused(f"Nothing was copied. {first}{more}", slots=problems)
    results = []
    note = f"planogram copied from {source_device.device_id}"
    for target in sorted(targets, key=lambda t: t.device_id):
        result = CopiedPlanogram(device_id=target.device_id)
        own = by_device.get(target.pk, {})
        for number, original in sorted(source.items()):
            slot = own.get(number)
            if slot is None:
                result.skipped.append(number)
                continue
            values = {name: getattr(original, name) for name in COPIED_FIELDS}
            Slot.objects.filter(pk=slot.pk).update(**values)
            slot.device = target
            if set_price(slot=slot, price=original.price, user=user, note=note) is not None:
                result.price_changes += 1
            result.copied.append(number)
        results.append(result)
    return results


def _refusal(slot: Slot, original: Slot, device_id: str) -> str | None:
    """Why ``original``'s settings cannot be copied onto ``slot``, or None."""
    where = f"{device_id} slot {slot.number}"
    if slot.quantity > original.capacity:
        return (
            f"{where} holds {slot.quantity} units, more than the copied capacity "
            f"({original.capacity})."
        )
    if slot.quantity and slot.product_id != original.product_id:
        becomes = original.product or "no product"
        return (
            f"{where} holds {slot.quantity} units of another product: empty it before "
            f"copying {becomes} onto it."
        )
    return None
