"""Products' life (created with their first price recorded, deleted only when never used)
and copying one machine's planogram onto others."""

from decimal import Decimal

import pytest
from django.urls import reverse

from inventory.choices import MovementReason
from inventory.exceptions import PlanogramCopyRefused, ProductConflict, ProductInUse
from inventory.models import PriceChange, Product, Slot
from inventory.planogram import copy_planogram
from inventory.services import (
    delete_product,
    ensure_slots,
    move_stock,
    save_product_changes,
    set_price,
)
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory

pytestmark = pytest.mark.django_db


# --- Products -------------------------------------------------------------------------------


def test_a_new_product_records_its_first_price_with_who_made_it(staff):
    product = Product(name="Water", sku="W-1", price=Decimal("1.20"))

    save_product_changes(product=product, changed=["name", "sku", "price"], user=staff)

    change = PriceChange.objects.get()
    assert (change.product, change.old_price, change.new_price, change.user, change.note) == (
        product,
        None,
        Decimal("1.20"),
        staff,
        "product created",
    )


def test_a_product_added_in_the_admin_records_its_first_price(client, staff):
    client.force_login(staff)

    response = client.post(
        reverse("admin:inventory_product_add"), {"name": "Tea", "sku": "T-1", "price": "2.40"}
    )

    assert response.status_code == 302
    change = PriceChange.objects.get(product__sku="T-1")
    assert (change.old_price, change.new_price, change.user) == (None, Decimal("2.40"), staff)


def test_a_sku_taken_meanwhile_is_a_conflict_and_nothing_is_written():
    ProductFactory(sku="DUP")

    with pytest.raises(ProductConflict, match="DUP"):
        save_product_changes(
            product=Product(name="x", sku="DUP", price=1), changed=["name", "sku", "price"]
        )

    assert Product.objects.count() == 1
    assert not PriceChange.objects.exists()


def test_a_product_in_slots_cannot_be_deleted_and_the_slots_are_named():
    product = ProductFactory()
    device = DeviceFactory(device_id="ESP32_00000000000A")
    SlotFactory(device=device, number=2, product=product)
    SlotFactory(device=device, number=4, product=product)

    with pytest.raises(ProductInUse) as refused:
        delete_product(product=product)

    assert "ESP32_00000000000A slot 2, ESP32_00000000000A slot 4" in refused.value.message
    assert refused.value.details["slots"] == [
        {"device_id": "ESP32_00000000000A", "slot": 2},
        {"device_id": "ESP32_00000000000A", "slot": 4},
    ]
    assert Product.objects.filter(pk=product.pk).exists()


def test_a_product_never_used_is_deleted_with_its_first_price_record():
    product = save_product_changes(
        product=Product(name="Typo", sku="TYPO", price=1), changed=["name", "sku", "price"]
    )

    delete_product(product=product)

    assert not Product.objects.exists()
    assert not PriceChange.objects.exists()


def test_a_product_whose_price_changed_keeps_its_history_and_is_not_deleted():
    product = save_product_changes(
        product=Product(name="Cola", sku="C", price=1), changed=["name", "sku", "price"]
    )
    set_price(product=product, price=Decimal("1.10"))

    with pytest.raises(ProductInUse, match="price history"):
        delete_product(product=product)

    assert PriceChange.objects.filter(product=product).count() == 2


# --- Copying a planogram -------------------------------------------------------------------


@pytest.fixture
def source():
    device = DeviceFactory(device_id="ESP32_0000000000A1", slot_count=3)
    cola, water = ProductFactory(sku="COLA"), ProductFactory(sku="WATER")
    SlotFactory(device=device, number=1, product=cola, quantity=0, capacity=8)
    SlotFactory(device=device, number=2, product=water, quantity=0, capacity=6)
    SlotFactory(device=device, number=3, product=None, quantity=0, capacity=4)
    Slot.objects.filter(device=device, number=1).update(
        par=6, low_stock_threshold=1, price=Decimal("2.10")
    )
    return device


def test_a_copy_sets_product_capacity_par_threshold_and_price_never_the_quantity(source, staff):
    target = DeviceFactory(device_id="ESP32_0000000000B1", slot_count=3)
    ensure_slots(device=target, count=3)
    # Units already of the copied product: the copy keeps them (another product is refused).
    cola = Slot.objects.get(device=source, number=1).product
    Slot.objects.filter(device=target, number=1).update(product=cola, capacity=10)
    filled = Slot.objects.get(device=target, number=1)
    move_stock(slot=filled, delta=5, reason=MovementReason.RESTOCK)

    [result] = copy_planogram(source_device=source, targets=[target], user=staff)

    assert (result.device_id, result.copied, result.skipped) == (
        "ESP32_0000000000B1",
        [1, 2, 3],
        [],
    )
    rows = Slot.objects.filter(device=target).order_by("number")
    got = [
        (s.number, s.product.sku if s.product else None, s.capacity, s.par, s.low_stock_threshold)
        for s in rows
    ]
    assert got == [(1, "COLA", 8, 6, 1), (2, "WATER", 6, None, 2), (3, None, 4, None, 2)]
    assert [s.quantity for s in rows] == [5, 0, 0]  # the units stay as they were counted
    change = PriceChange.objects.get(slot__device=target)
    assert (change.slot.number, change.old_price, change.new_price, change.user) == (
        1,
        None,
        Decimal("2.10"),
        staff,
    )
    assert result.price_changes == 1
    assert change.note == "planogram copied from ESP32_0000000000A1"


def test_a_target_with_fewer_slots_gets_the_ones_it_has_and_the_others_are_reported(source):
    small = DeviceFactory(device_id="ESP32_0000000000B2", slot_count=1)
    ensure_slots(device=small, count=1)
    Slot.objects.create(device=small, number=9, capacity=3)  # beyond the source: left alone

    [result] = copy_planogram(source_device=source, targets=[small])

    assert (result.copied, result.skipped) == ([1], [2, 3])
    assert Slot.objects.filter(device=small).count() == 2
    assert Slot.objects.get(device=small, number=9).capacity == 3


def test_a_target_slot_holding_more_than_the_copied_capacity_refuses_the_whole_copy(source):
    fine = DeviceFactory(device_id="ESP32_0000000000B3", slot_count=2)
    full = DeviceFactory(device_id="ESP32_0000000000B4", slot_count=2)
    for device in (fine, full):
        ensure_slots(device=device, count=2)
    slot = Slot.objects.get(device=full, number=2)
    Slot.objects.filter(pk=slot.pk).update(product=ProductFactory(sku="X"))
    move_stock(slot=slot, delta=7, reason=MovementReason.RESTOCK)  # 7 > the copied 6

    with pytest.raises(PlanogramCopyRefused) as refused:
        copy_planogram(source_device=source, targets=[fine, full])

    assert refused.value.details["slots"] == {
        "ESP32_0000000000B4": {
            "2": "ESP32_0000000000B4 slot 2 holds 7 units, more than the copied capacity (6)."
        }
    }
    assert "slot 2" in refused.value.message
    assert not Slot.objects.filter(device=fine, product__isnull=False).exists()
    assert not PriceChange.objects.exists()


def test_a_target_slot_holding_units_of_another_product_refuses_the_whole_copy(source):
    fine = DeviceFactory(device_id="ESP32_0000000000B5", slot_count=2)
    other = DeviceFactory(device_id="ESP32_0000000000B6", slot_count=3)
    ensure_slots(device=fine, count=2)
    ensure_slots(device=other, count=3)
    held = Slot.objects.get(device=other, number=1)
    tea = ProductFactory(sku="TEA")
    Slot.objects.filter(pk=held.pk).update(product=tea)
    move_stock(slot=held, delta=2, reason=MovementReason.RESTOCK)
    emptied = Slot.objects.get(device=other, number=2)  # another product, but no units: fine
    Slot.objects.filter(pk=emptied.pk).update(product=tea)

    with pytest.raises(PlanogramCopyRefused) as refused:
        copy_planogram(source_device=source, targets=[fine, other])

    assert refused.value.details["slots"] == {
        "ESP32_0000000000B6": {
            "1": "ESP32_0000000000B6 slot 1 holds 2 units of another product: empty it before "
            f"copying {Slot.objects.get(device=source, number=1).product} onto it."
        }
    }
    assert list(Slot.objects.filter(device=other).values_list("product__sku", flat=True)) == [
        "TEA",
        "TEA",
        None,
    ]
    assert not Slot.objects.filter(device=fine, product__isnull=False).exists()
    assert held.movements.count() == 1 and not PriceChange.objects.exists()


def test_a_slot_holding_units_is_refused_a_copy_that_would_leave_it_without_a_product(source):
    target = DeviceFactory(device_id="ESP32_0000000000B7", slot_count=3)
    held = SlotFactory(device=target, number=3, quantity=0, capacity=4)
    move_stock(slot=held, delta=1, reason=MovementReason.RESTOCK)

    with pytest.raises(PlanogramCopyRefused, match="slot 3 holds 1 units"):
        copy_planogram(source_device=source, targets=[target])

    assert Slot.objects.get(device=target, number=3).product is not None


def test_copying_onto_the_source_itself_changes_nothing(source):
    assert copy_planogram(source_device=source, targets=[source], user=UserFactory()) == []
    assert not PriceChange.objects.exists()
