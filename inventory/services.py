"""The only code that changes stock. Every change writes a ledger row in the same transaction."""

from collections.abc import Iterable, Mapping
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError
from django.db import transaction as db_transaction

from vending_site.backends.statements import Insert, Select, Update
from vending_site.live import events
from vending_site.live.events import publish

from .choices import MovementReason
from .exceptions import (
    CapacityExceeded,
    OutOfStock,
    PlanogramInvalid,
    ProductConflict,
    ProductInUse,
    RestockRefused,
)
from .models import PriceChange, Product, Slot, StockMovement


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


# The fields a slot edit saves directly; ``quantity`` goes through the ledger and ``price``
# through set_price, so neither is among them.
SLOT_DIRECT_FIELDS = frozenset(
    {
        "device",
        "number",
        "product",
        "capacity",
        "par",
        "low_stock_threshold",
        "enabled",
        "needs_attention",
    }
)
# What the planogram API may change on a slot (not its place, quantity or attention flag).
SLOT_PLANOGRAM_FIELDS = frozenset(
    {"product", "capacity", "par", "low_stock_threshold", "price", "enabled"}
)


@db_transaction.atomic
def save_slot_changes(
    *,
    slot: Slot,
    changed: Iterable[str],
    user: AbstractBaseUser | None = None,
    note: str = "",
    adjustment_note: str = "",
) -> Slot:
    """Save an edited slot: the ``changed`` fields, its quantity through the ledger, its
    price through :func:`set_price`.

    ``slot`` carries the wanted values (a validated admin form's instance, say). A new slot
    is created empty and then filled. For an existing slot only the changed fields other
    than ``quantity`` are written, so a vend that took a unit while the edit was open is
    never overwritten. A quantity raised above what the slot holds (under its lock) is a
    fill: a ``restock`` ledger row made by :func:`restock`, the service of
    ``POST /machines/<id>/restock``, so a slot with no product cannot be filled; a quantity
    lowered is an ``adjustment`` (a count) noted ``adjustment_note``, else ``note``. Both
    are ordered around the other fields so that the database's ``quantity <= capacity``
    check holds at every step. Raises :class:`PlanogramInvalid` (nothing written) when the
    PAR would pass the capacity or the capacity would be below what the slot holds, checked
    under the slot's row lock, and :class:`RestockRefused` for a fill that cannot be made.
    """
    changed = frozenset(changed)
    wanted = slot.quantity
    price = slot.price
    if slot.pk is None:
        _check_planogram(slot, quantity=wanted, capacity=slot.capacity, par=slot.par)
        slot.quantity = 0
        slot.price = None
        slot.save()
        if wanted:
            _fill(slot=slot, units=wanted, user=user, note=note)
        if price is not None:
            set_price(slot=slot, price=price, user=user, note=note)
        return slot
    fields = sorted(changed & SLOT_DIRECT_FIELDS)
    values = {name: getattr(slot, name) for name in fields}
    quantity_changed = "quantity" in changed
    current = lock_slot(slot.pk)
    final = {name: getattr(current, name) for name in ("capacity", "par")}
    final.update((name, values[name]) for name in final if name in values)
    _check_planogram(slot, quantity=wanted if quantity_changed else current.quantity, **final)
    # Emptying first lets a lower capacity fit; a higher capacity must exist before filling.
    set_first = quantity_changed and wanted < current.quantity
    if set_first:
        set_stock(
            slot=slot,
            quantity=wanted,
            reason=MovementReason.ADJUSTMENT,
            user=user,
            note=adjustment_note or note,
        )
    if fields:
        for name, value in values.items():
            setattr(slot, name, value)  # set_stock refreshes the slot in place
        slot.save(update_fields=fields)
    if quantity_changed and wanted > current.quantity:
        _fill(slot=slot, units=wanted - current.quantity, user=user, note=note)
    if "price" in changed:
        set_price(slot=slot, price=price, user=user, note=note)
    slot.refresh_from_db(fields=["quantity", "price"])
    return slot


def _fill(*, slot: Slot, units: int, user: AbstractBaseUser | None, note: str) -> None:
    """A quantity raised by an edit, recorded as what it is: units loaded (a restock)."""
    restock(device=slot.device, loaded={slot.number: units}, user=user, note=note)
    slot.refresh_from_db(fields=["quantity"])


def _check_planogram(slot: Slot, *, quantity: int, capacity: int, par: int | None) -> None:
    where = f"Slot {slot.number}" + (f" of {slot.device.device_id}" if slot.device_id else "")
    if par is not None and par > capacity:
        raise PlanogramInvalid(
            f"{where}: the PAR ({par}) cannot be above the capacity ({capacity}).",
            slot_id=slot.number,
        )
    if quantity > capacity:
        raise PlanogramInvalid(
            f"{where} holds {quantity} units; the capacity ({capacity}) cannot be less.",
            slot_id=slot.number,
        )


def update_slot(
    *, slot: Slot, changes: Mapping[str, object], user: AbstractBaseUser | None = None
) -> Slot:
    """Change a slot's planogram (any of :data:`SLOT_PLANOGRAM_FIELDS`) as
    :func:`save_slot_changes` saves an edit: under the slot's lock, the price recorded."""
    unknown = set(changes) - SLOT_PLANOGRAM_FIELDS
    if unknown:
        raise ValueError(f"not planogram fields: {sorted(unknown)}")
    for name, value in changes.items():
        setattr(slot, name, value)
    return save_slot_changes(slot=slot, changed=changes.keys(), user=user, note="planogram edit")


@db_transaction.atomic
def set_price(
    *,
    product: Product | None = None,
    slot: Slot | None = None,
    price: Decimal | None,
    user: AbstractBaseUser | None = None,
    note: str = "",
) -> PriceChange | None:
    """Set a product's price, or a slot's override (``None``: the product's price applies),
    and record the change (who, old, new) in :class:`PriceChange`. The only code that
    changes a price. Returns ``None`` when the price already is ``price``.

    The row is locked first, so two concurrent changes are recorded in order, each with the
    old price the other left. Raises :class:`PlanogramInvalid` for a negative price, or no
    price for a product.
    """
    if (product is None) == (slot is None):
        raise ValueError("set_price needs a product or a slot")
    if price is not None:
        price = Decimal(price)
    if price is not None and price < 0:
        raise PlanogramInvalid(f"A price cannot be negative ({price}).")
    if slot is not None:
        locked = lock_slot(slot.pk)
        target, model = slot, Slot
    else:
        if price is None:
            raise PlanogramInvalid(f"{product} needs a price.")
        locked = Product.objects.select_for_update().get(pk=product.pk)
        target, model = product, Product
    old = locked.price
    target.price = price
    if old == price:
        return None
    model.objects.filter(pk=locked.pk).update(price=price)
    return PriceChange.objects.create(
        product=product, slot=slot, old_price=old, new_price=price, user=user, note=note[:255]
    )


@db_transaction.atomic
def save_product_changes(
    *,
    product: Product,
    changed: Iterable[str],
    user: AbstractBaseUser | None = None,
    note: str = "",
) -> Product:
    """Save a new or edited product. A new product's first price is recorded (a
    :class:`PriceChange` from none to its price, with ``user``); an edited product's changed
    price goes through :func:`set_price`, its other changed fields are saved as they are. A
    SKU another product took meanwhile is :class:`ProductConflict` (nothing written)."""
    price = product.price
    created = product.pk is None
    changed = frozenset(changed)
    fields = sorted(changed - {"price", "id", "created_at"})
    try:
        with db_transaction.atomic():
            if created:
                product.save()
            elif fields:
                product.save(update_fields=fields)
    except IntegrityError as exc:
        if Product.objects.filter(sku=product.sku).exclude(pk=product.pk).exists():
            raise ProductConflict(
                f"Another product already has the SKU {product.sku!r}.", field="sku"
            ) from exc
        raise
    if created:
        PriceChange.objects.create(
            product=product,
            old_price=None,
            new_price=price,
            user=user,
            note=(note or "product created")[:255],
        )
    elif "price" in changed:
        set_price(product=product, price=price, user=user, note=note or "product edited")
    return product


@db_transaction.atomic
def delete_product(*, product: Product) -> None:
    """Delete a product that was never put to use: no slot holds it and its price was never
    changed after it was created (its first-price record goes with it). Otherwise
    :class:`ProductInUse` says why, naming the slots; nothing is deleted. Sales keep the
    product's name, SKU and price of their own, so a deleted product leaves them whole."""
    locked = Product.objects.select_for_update().get(pk=product.pk)
    slots = list(
        Slot.objects.filter(product=locked)
        .select_related("device")
        .order_by("device__device_id", "number")
    )
    if slots:
        names = ", ".join(f"{slot.device.device_id} slot {slot.number}" for slot in slots[:10])
        more = f" and {len(slots) - 10} more" if len(slots) > 10 else ""
        raise ProductInUse(
            f"{locked} is still in {len(slots)} slot(s): {names}{more}. Assign those slots "
            "another product (or none) first.",
            slots=[{"device_id": s.device.device_id, "slot": s.number} for s in slots],
        )
    history = PriceChange.objects.filter(product=locked)
    if history.exclude(old_price__isnull=True).exists():
        raise ProductInUse(
            f"{locked} has a price history ({history.count()} changes), which is kept: a "
            "product whose price was changed cannot be deleted.",
            slots=[],
        )
    history.delete()
    locked.delete()


@db_transaction.atomic
def restock(
    *,
    device,
    loaded: Mapping[str | int, object],
    user: AbstractBaseUser | None = None,
    note: str = "",
) -> list[StockMovement]:
    """Add the units loaded into each slot of ``device`` (``{slot number: units}``): one
    ``restock`` ledger row per slot, all in one database transaction.

    A partial fill is fine; a fill must be a whole number of units above 0 into a slot that
    exists, has a product and has room. If any fill cannot be made, :class:`RestockRefused`
    names every such slot (``slots``: slot -> reason) and nothing is written. The slots are
    locked in primary-key order, as every multi-slot writer must, so two restocks never
    deadlock; a vend locks one slot only.
    """
    problems: dict[str, str] = {}
    fills: dict[int, int] = {}
    for key, units in loaded.items():
        number = _slot_number(key)
        if number is None:
            problems[str(key)] = f"{str(key)[:20]!r} is not a slot number."
        elif type(units) is not int or units < 1:
            problems[str(key)] = f"Slot {number}: units loaded must be a whole number above 0."
        elif number in fills:
            problems[str(key)] = f"Slot {number} is named twice."
        else:
            fills[number] = units
    slots = list(
        Slot.objects.select_for_update(of=("self",))
        .select_related("product")
        .filter(device=device, number__in=fills)
        .order_by("pk")
    )
    by_number = {slot.number: slot for slot in slots}
    for number, units in sorted(fills.items()):
        slot = by_number.get(number)
        if slot is None:
            problems[str(number)] = f"{device.device_id} has no slot {number}."
        elif slot.product_id is None:
            problems[str(number)] = f"Slot {number} has no product assigned."
        elif slot.quantity + units > slot.capacity:
            problems[str(number)] = (
                f"Slot {number} holds {slot.quantity} of {slot.capacity}: adding {units} "
                f"would pass its capacity (room for {slot.capacity - slot.quantity})."
            )
    if not fills and not problems:
        raise RestockRefused("Nothing was loaded: name at least one slot.", slots={})
    if problems:
        first = next(iter(sorted(problems.items())))[1]
        more = f" ({len(problems) - 1} more slot(s) refused)" if len(problems) > 1 else ""
        raise RestockRefused(
            f"Nothing was restocked. {first}{more}", slots=dict(sorted(problems.items()))
        )
    movements = []
    with events.batched():
        for slot in slots:  # in primary-key order, the order they were locked in
            slot.device = device
            movements.append(
                move_stock(
                    slot=slot,
                    delta=fills[slot.number],
                    reason=MovementReason.RESTOCK,
                    user=user,
                    note=note,
                    locked=True,
                )
            )
    return movements


# A slot number as a key of a restock's "loaded" (JSON keys are strings); the model's field
# is a PositiveSmallIntegerField, so anything larger names no slot (and must not reach SQL).
_MAX_SLOT_NUMBER = 32767


def _slot_number(key: str | int) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, str):
        if not (key.isascii() and key.isdigit() and len(key) <= 5):
            return None
        key = int(key)
    if not isinstance(key, int) or not 1 <= key <= _MAX_SLOT_NUMBER:
        return None
    return key


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
