"""The only code that changes stock. Every change writes a ledger row in the same transaction."""

from collections.abc import Iterable

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction as db_transaction

from vending_site.backends.statements import Insert, Select, Update
from vending_site.live.events import publish

from .choices import MovementReason
from .exceptions import CapacityExceeded, OutOfStock
from .models import Slot, StockMovement


def lock_slot(slot_id: int) -> Slot:
    """The slot row, locked until the surrounding transaction ends (a no-op lock on SQLite,
    where IMMEDIATE transactions already serialise writers)."""
    return (
        Slot.objects.select_for_update(of=("self",))
        .select_related("product", "device")
        .get(pk=slot_id)
    )


# The vend's slot read, compiled once (vending_site.backends.statements). Not ordered: the (device,
# number) pair is unique, and ordering by the device would join its table for nothing.
_LOCK_DEVICE_SLOT = Select(
    lambda device, number: (
        Slot.objects.select_for_update(of=("self",))
        .select_related("product")
        .filter(device=device, number=number)
        .order_by()[:1]
    ),
    device=Slot._meta.get_field("device"),
    number=Slot._meta.get_field("number"),
)
_NEW_MOVEMENT = Insert(StockMovement)
_SET_QUANTITY = Update(
    lambda pk, quantity: (Slot.objects.filter(pk=pk), {"quantity": quantity}),
    pk=Slot._meta.pk,
    quantity=Slot._meta.get_field("quantity"),
)


def lock_device_slot(*, device, number: int) -> Slot | None:
    """Slot ``number`` of ``device``, locked as :func:`lock_slot` locks it, or ``None`` when the
    device has no such slot. One query: the (device, number) pair is unique."""
    slot = _LOCK_DEVICE_SLOT.first(device=device.pk, number=number)
    if slot is not None:
        slot.device = device  # the caller's object: no second read of the device row
    return slot


def move_stock(
    *,
    slot: Slot,
    delta: int,
    reason: MovementReason,
    transaction=None,
    user: AbstractBaseUser | None = None,
    note: str = "",
    clamp: bool = False,
    locked: bool = False,
) -> StockMovement:
    """Change ``slot.quantity`` by ``delta`` and record it in the ledger.

    The slot row is locked first, so concurrent movements queue and none is lost.
    Raises :class:`OutOfStock` when the quantity would go below zero and
    :class:`CapacityExceeded` when it would go above capacity; with ``clamp=True`` the
    movement is cut to what fits instead (a refund into a slot restocked meanwhile), and
    the ledger row says so. ``slot`` is refreshed in place.

    ``locked=True`` says the caller read ``slot`` through :func:`lock_slot` (or
    :func:`lock_device_slot`) in the database transaction it is in now, so the row is not
    read again; the movement then joins that transaction without a savepoint of its own,
    so if it fails the caller's whole transaction rolls back.
    """
    if locked and not db_transaction.get_connection().in_atomic_block:
        raise RuntimeError("move_stock(locked=True) outside the transaction holding the lock")
    with db_transaction.atomic(savepoint=not locked):
        return _move_stock(
            slot=slot,
            locked=slot if locked else lock_slot(slot.pk),
            delta=delta,
            reason=reason,
            transaction=transaction,
            user=user,
            note=note,
            clamp=clamp,
        )


def _move_stock(
    *,
    slot: Slot,
    locked: Slot,
    delta: int,
    reason: MovementReason,
    transaction,
    user: AbstractBaseUser | None,
    note: str,
    clamp: bool,
) -> StockMovement:
    target = locked.quantity + delta
    if target < 0 or target > locked.capacity:
        if not clamp:
            if target < 0:
                raise OutOfStock(
                    f"{locked} holds {locked.quantity}, cannot take {-delta}.",
                    requested=-delta,
                    available=locked.quantity,
                )
            raise CapacityExceeded(
                f"{locked} holds {locked.quantity} of {locked.capacity}, cannot add {delta}.",
                requested=delta,
                free=locked.capacity - locked.quantity,
            )
        clamped = min(max(target, 0), locked.capacity)
        note = (note + " " if note else "") + f"(clamped from {delta:+d})"
        delta, target = clamped - locked.quantity, clamped
    if delta:
        _SET_QUANTITY.run(pk=locked.pk, quantity=target)
    movement = _NEW_MOVEMENT.create(
        slot=locked,
        delta=delta,
        quantity_after=target,
        reason=reason,
        transaction=transaction,
        user=user,
        note=note[:255],
    )
    slot.quantity = target
    slot.capacity = locked.capacity
    publish(
        "stock",
        {
            "device_id": locked.device.device_id,
            "slot": locked.number,
            "quantity": target,
            "capacity": locked.capacity,
            "delta": delta,
            "reason": str(reason),
        },
    )
    return movement


@db_transaction.atomic
def set_stock(
    *,
    slot: Slot,
    quantity: int,
    reason: MovementReason = MovementReason.ADJUSTMENT,
    user: AbstractBaseUser | None = None,
    note: str = "",
) -> StockMovement | None:
    """Set the quantity to an absolute value (a count, a restock) through the ledger.

    Returns ``None`` when the quantity already is ``quantity``.
    """
    locked = lock_slot(slot.pk)
    delta = quantity - locked.quantity
    if delta == 0:
        return None
    return move_stock(slot=slot, delta=delta, reason=reason, user=user, note=note)


# The fields a slot edit saves directly; ``quantity`` is deliberately not among them.
SLOT_DIRECT_FIELDS = frozenset(
    {"device", "number", "product", "capacity", "low_stock_threshold", "enabled", "needs_attention"}
)


@db_transaction.atomic
def save_slot_changes(
    *,
    slot: Slot,
    changed: Iterable[str],
    user: AbstractBaseUser | None = None,
    note: str = "",
) -> Slot:
    """Save an edited slot: the ``changed`` fields, its quantity through the ledger.

    ``slot`` carries the wanted values (a validated admin form's instance, say). A new slot
    is created empty and then filled through :func:`set_stock`. For an existing slot only
    the changed fields other than ``quantity`` are written, so a vend that took a unit while
    the edit was open is never overwritten; a changed quantity becomes an ``adjustment``
    ledger row, ordered around the other fields so that the database's
    ``quantity <= capacity`` check holds at every step.
    """
    changed = frozenset(changed)
    wanted = slot.quantity
    if slot.pk is None:
        slot.quantity = 0
        slot.save()
        if wanted:
            set_stock(
                slot=slot, quantity=wanted, reason=MovementReason.ADJUSTMENT, user=user, note=note
            )
        return slot
    fields = sorted(changed & SLOT_DIRECT_FIELDS)
    values = {name: getattr(slot, name) for name in fields}
    quantity_changed = "quantity" in changed
    current = lock_slot(slot.pk).quantity
    # Emptying first lets a lower capacity fit; a higher capacity must exist before filling.
    set_first = quantity_changed and wanted < current
    if set_first:
        set_stock(
            slot=slot, quantity=wanted, reason=MovementReason.ADJUSTMENT, user=user, note=note
        )
    if fields:
        for name, value in values.items():
            setattr(slot, name, value)  # set_stock refreshes the slot in place
        slot.save(update_fields=fields)
    if quantity_changed and not set_first:
        set_stock(
            slot=slot, quantity=wanted, reason=MovementReason.ADJUSTMENT, user=user, note=note
        )
    slot.refresh_from_db(fields=["quantity"])
    return slot


@db_transaction.atomic
def restock_to_capacity(
    *, slot: Slot, user: AbstractBaseUser | None = None
) -> StockMovement | None:
    """Fill the slot up to its capacity, recorded as a ``restock``."""
    capacity = lock_slot(slot.pk).capacity
    return set_stock(
        slot=slot,
        quantity=capacity,
        reason=MovementReason.RESTOCK,
        user=user,
        note="restocked to capacity",
    )


def ensure_slots(*, device, count: int) -> None:
    """Create the missing slot rows 1..count for a device (empty, no product)."""
    existing = set(Slot.objects.filter(device=device).values_list("number", flat=True))
    Slot.objects.bulk_create(
        [Slot(device=device, number=n) for n in range(1, count + 1) if n not in existing]
    )
