"""The stock ledger: every quantity change goes through move_stock and is explained by it."""

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Sum

from inventory.choices import MovementReason
from inventory.exceptions import CapacityExceeded, OutOfStock, RestockRefused
from inventory.models import Slot, StockMovement
from inventory.services import (
    ensure_slots,
    move_stock,
    restock_to_capacity,
    save_slot_changes,
    set_stock,
)
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory

pytestmark = pytest.mark.django_db


def ledger_sum(slot: Slot) -> int:
    return slot.movements.aggregate(total=Sum("delta"))["total"] or 0


def test_move_stock_changes_quantity_and_writes_one_ledger_row():
    slot = SlotFactory(quantity=0, capacity=10)
    staff = UserFactory(is_staff=True)

    movement = move_stock(slot=slot, delta=4, reason=MovementReason.RESTOCK, user=staff)

    slot.refresh_from_db()
    assert slot.quantity == 4
    assert (movement.delta, movement.quantity_after, movement.user) == (4, 4, staff)
    assert StockMovement.objects.filter(slot=slot).count() == 1


def test_taking_more_than_is_there_is_refused_and_changes_nothing():
    slot = SlotFactory(quantity=1, capacity=10)

    with pytest.raises(OutOfStock) as refused:
        move_stock(slot=slot, delta=-2, reason=MovementReason.VEND)

    assert refused.value.details == {"requested": 2, "available": 1}
    slot.refresh_from_db()
    assert slot.quantity == 1
    assert not StockMovement.objects.filter(slot=slot).exists()


def test_filling_past_capacity_is_refused_and_changes_nothing():
    slot = SlotFactory(quantity=9, capacity=10)

    with pytest.raises(CapacityExceeded):
        move_stock(slot=slot, delta=2, reason=MovementReason.RESTOCK)

    slot.refresh_from_db()
    assert slot.quantity == 9


def test_a_clamped_refund_into_a_full_slot_is_recorded_with_what_actually_moved():
    slot = SlotFactory(quantity=10, capacity=10)

    movement = move_stock(slot=slot, delta=1, reason=MovementReason.REFUND, clamp=True)

    assert movement.delta == 0
    assert "clamped from +1" in movement.note
    slot.refresh_from_db()
    assert slot.quantity == 10


def test_set_stock_records_the_difference_and_nothing_when_unchanged():
    slot = SlotFactory(quantity=3, capacity=10)

    movement = set_stock(slot=slot, quantity=7)
    unchanged = set_stock(slot=slot, quantity=7)

    assert movement.delta == 4
    assert movement.reason == MovementReason.ADJUSTMENT
    assert unchanged is None
    assert slot.movements.count() == 1


def test_restock_fills_to_capacity_as_a_restock_row():
    slot = SlotFactory(quantity=2, capacity=8)

    movement = restock_to_capacity(slot=slot)

    slot.refresh_from_db()
    assert slot.quantity == 8
    assert (movement.reason, movement.delta) == (MovementReason.RESTOCK, 6)


def test_the_ledger_explains_the_quantity_after_any_sequence_of_movements():
    slot = SlotFactory(quantity=0, capacity=20)
    for delta, reason in [
        (10, MovementReason.RESTOCK),
        (-1, MovementReason.VEND),
        (-1, MovementReason.VEND),
        (1, MovementReason.REFUND),
        (-3, MovementReason.ADJUSTMENT),
    ]:
        move_stock(slot=slot, delta=delta, reason=reason)
    set_stock(slot=slot, quantity=0, reason=MovementReason.SLOT_EMPTY)

    slot.refresh_from_db()
    assert slot.quantity == 0 == ledger_sum(slot)
    afters = list(
        slot.movements.order_by("created_at", "id").values_list("quantity_after", flat=True)
    )
    assert afters == [10, 9, 8, 9, 6, 0]


def test_the_database_refuses_a_quantity_above_capacity_even_bypassing_services():
    slot = SlotFactory(quantity=1, capacity=5)

    with pytest.raises(IntegrityError), transaction.atomic():
        Slot.objects.filter(pk=slot.pk).update(quantity=6)


def test_the_database_refuses_two_slots_with_one_number_on_a_machine():
    slot = SlotFactory(number=2)

    with pytest.raises(IntegrityError), transaction.atomic():
        Slot.objects.create(device=slot.device, number=2)


def test_ledger_rows_cannot_be_deleted_with_their_slot():
    slot = SlotFactory(quantity=0)
    move_stock(slot=slot, delta=1, reason=MovementReason.RESTOCK)

    with pytest.raises(IntegrityError), transaction.atomic():
        slot.delete()


def test_ensure_slots_creates_only_the_missing_numbers():
    device = DeviceFactory(slot_count=4)
    SlotFactory(device=device, number=2, quantity=3)

    ensure_slots(device=device, count=4)

    assert list(device.slots.order_by("number").values_list("number", "quantity")) == [
        (1, 0),
        (2, 3),
        (3, 0),
        (4, 0),
    ]


def test_saving_slot_changes_leaves_a_vend_taken_meanwhile_alone():
    slot = SlotFactory(quantity=5, capacity=10, enabled=True)
    edited = Slot.objects.get(pk=slot.pk)  # an edit opened before the vend
    move_stock(slot=slot, delta=-1, reason=MovementReason.VEND)
    edited.enabled = False

    saved = save_slot_changes(slot=edited, changed=["enabled"], user=UserFactory())

    slot.refresh_from_db()
    assert (slot.quantity, slot.enabled, saved.quantity) == (4, False, 4)
    assert not slot.movements.filter(reason=MovementReason.ADJUSTMENT).exists()


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [((8, 10), (3, 4), MovementReason.ADJUSTMENT), ((5, 10), (15, 20), MovementReason.RESTOCK)],
    ids=["lowered together: a count", "raised together: a fill"],
)
def test_a_new_quantity_and_capacity_are_saved_together_through_the_ledger(before, after, reason):
    slot = SlotFactory(quantity=before[0], capacity=before[1])
    staff = UserFactory(is_staff=True)
    slot.quantity, slot.capacity = after

    save_slot_changes(slot=slot, changed=["quantity", "capacity"], user=staff, note="edit")

    slot.refresh_from_db()
    assert (slot.quantity, slot.capacity) == after
    row = slot.movements.get()
    assert (row.reason, row.delta, row.user, row.note) == (
        reason,
        after[0] - before[0],
        staff,
        "edit",
    )


def test_a_raised_quantity_counts_the_units_loaded_from_what_the_slot_holds_now():
    slot = SlotFactory(quantity=5, capacity=10)
    edited = Slot.objects.get(pk=slot.pk)  # the edit opened at 5
    move_stock(slot=slot, delta=-1, reason=MovementReason.VEND)  # a vend meanwhile: 4
    edited.quantity = 9

    save_slot_changes(slot=edited, changed=["quantity"])

    row = slot.movements.order_by("-id").first()
    assert (row.reason, row.delta, row.quantity_after) == (MovementReason.RESTOCK, 5, 9)


def test_filling_a_slot_with_no_product_is_refused_and_nothing_is_written():
    slot = SlotFactory(product=None, quantity=0, capacity=10)
    slot.quantity, slot.capacity = 3, 12

    with pytest.raises(RestockRefused, match="no product"):
        save_slot_changes(slot=slot, changed=["quantity", "capacity"])

    slot.refresh_from_db()
    assert (slot.quantity, slot.capacity, slot.movements.count()) == (0, 10, 0)


def test_a_new_slot_is_created_empty_then_filled_through_the_ledger():
    device = DeviceFactory()
    slot = Slot(device=device, number=1, capacity=10, quantity=6, product=ProductFactory())

    save_slot_changes(slot=slot, changed=["number", "capacity", "quantity", "product"])

    slot.refresh_from_db()
    assert slot.quantity == 6
    assert list(slot.movements.values_list("delta", "reason")) == [(6, MovementReason.RESTOCK)]
