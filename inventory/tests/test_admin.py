"""The inventory admin: products, slots (stock changes only through the ledger), the ledger."""

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inventory.choices import MovementReason
from inventory.models import Product, Slot, StockMovement
from inventory.services import move_stock
from tests.factories import DeviceFactory, SlotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def slot_post_data(slot: Slot, **changes) -> dict:
    """The slot change form as rendered for ``slot``, with ``changes`` typed in."""
    data = {
        "product": slot.product_id or "",
        "quantity": slot.quantity,
        "initial-quantity": slot.quantity,
        "capacity": slot.capacity,
        "low_stock_threshold": slot.low_stock_threshold,
    }
    if slot.enabled:
        data["enabled"] = "on"
    if slot.needs_attention:
        data["needs_attention"] = "on"
    data.update(changes)
    return data


def test_every_inventory_admin_page_loads_for_staff(staff_client, online_device):
    slot = Slot.objects.filter(device=online_device).first()
    movement = move_stock(slot=slot, delta=1, reason=MovementReason.RESTOCK)
    urls = [
        reverse("admin:inventory_product_changelist"),
        reverse("admin:inventory_product_add"),
        reverse("admin:inventory_product_change", args=[slot.product_id]),
        reverse("admin:inventory_slot_changelist"),
        reverse("admin:inventory_slot_add"),
        reverse("admin:inventory_slot_change", args=[slot.pk]),
        reverse("admin:inventory_stockmovement_changelist"),
        reverse("admin:inventory_stockmovement_change", args=[movement.pk]),
    ]
    for url in urls:
        assert staff_client.get(url).status_code == 200, url


def test_products_are_searchable_by_name_and_sku(staff_client, online_device):
    url = reverse("admin:inventory_product_changelist")
    response = staff_client.get(f"{url}?q=SKU-3")
    assert [product.sku for product in response.context["cl"].result_list] == ["SKU-3"]


def test_the_slot_list_marks_empty_and_low_slots(staff_client, online_device):
    Slot.objects.filter(device=online_device, number=1).update(quantity=0)
    Slot.objects.filter(device=online_device, number=2).update(quantity=2)

    body = staff_client.get(reverse("admin:inventory_slot_changelist")).content.decode()

    assert body.count(">empty<") == 1
    assert body.count(">low<") == 1
    assert body.count(">ok<") == 3


def test_the_slot_and_ledger_lists_cost_the_same_queries_for_few_or_many_rows(
    staff_client, online_device
):
    urls = [
        reverse("admin:inventory_slot_changelist"),
        reverse("admin:inventory_stockmovement_changelist"),
    ]

    def queries_for(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(url).status_code == 200
        return len(captured)

    slot = Slot.objects.get(device=online_device, number=1)
    move_stock(slot=slot, delta=1, reason=MovementReason.RESTOCK)
    few = [queries_for(url) for url in urls]
    for number in range(1, 6):
        other = SlotFactory(device=DeviceFactory(), number=number)
        move_stock(slot=other, delta=-1, reason=MovementReason.ADJUSTMENT)

    assert [queries_for(url) for url in urls] == few


@pytest.mark.parametrize(("level", "numbers"), [("empty", [1]), ("low", [2]), ("ok", [3, 4, 5])])
def test_the_stock_level_filter_picks_slots_by_level(staff_client, online_device, level, numbers):
    Slot.objects.filter(device=online_device, number=1).update(quantity=0)
    Slot.objects.filter(device=online_device, number=2).update(quantity=2)

    response = staff_client.get(reverse("admin:inventory_slot_changelist") + f"?stock={level}")

    assert [slot.number for slot in response.context["cl"].result_list] == numbers


def test_restock_action_fills_slots_to_capacity_with_restock_ledger_rows(
    staff_client, staff, online_device
):
    slots = list(Slot.objects.filter(device=online_device, number__in=[1, 2]))
    full = Slot.objects.get(device=online_device, number=3)
    Slot.objects.filter(pk=full.pk).update(quantity=full.capacity)

    response = staff_client.post(
        reverse("admin:inventory_slot_changelist"),
        {"action": "restock_selected", "_selected_action": [s.pk for s in [*slots, full]]},
    )

    assert response.status_code == 302
    for slot in slots:
        slot.refresh_from_db()
        assert slot.quantity == slot.capacity == 10
        movement = slot.movements.get()
        assert (movement.reason, movement.delta, movement.user) == (
            MovementReason.RESTOCK,
            5,
            staff,
        )
    assert not full.movements.exists()
    assert messages_of(response) == [
        "Restocked 2 slot(s) to capacity (+10 units).",
        "1 slot(s) were already full.",
    ]
    untouched = Slot.objects.get(device=online_device, number=4)
    assert untouched.quantity == 5


def test_raising_the_quantity_on_the_slot_page_is_a_restock_like_the_restock_endpoint(
    staff_client, staff
):
    slot = SlotFactory(device=DeviceFactory(), quantity=0, capacity=10)

    response = staff_client.post(
        reverse("admin:inventory_slot_change", args=[slot.pk]),
        slot_post_data(slot, quantity=6, capacity=12, stock_note="Monday fill"),
    )

    assert response.status_code == 302
    slot.refresh_from_db()
    assert (slot.quantity, slot.capacity) == (6, 12)
    movement = slot.movements.get()
    assert (movement.reason, movement.delta, movement.user, movement.note) == (
        "restock",
        6,
        staff,
        "Monday fill",
    )
    assert slot.movements.aggregate(total=Sum("delta"))["total"] == slot.quantity


def test_lowering_the_quantity_on_the_slot_page_is_an_adjustment_with_a_default_note(
    staff_client, staff
):
    slot = SlotFactory(device=DeviceFactory(), quantity=0, capacity=10)
    move_stock(slot=slot, delta=7, reason=MovementReason.RESTOCK)

    response = staff_client.post(
        reverse("admin:inventory_slot_change", args=[slot.pk]), slot_post_data(slot, quantity=4)
    )

    assert response.status_code == 302
    movement = slot.movements.order_by("-id").first()
    assert (movement.reason, movement.delta, movement.user, movement.note) == (
        "adjustment",
        -3,
        staff,
        "admin: quantity corrected",
    )
    assert Slot.objects.get(pk=slot.pk).quantity == 4


def test_filling_a_slot_with_no_product_is_refused_on_the_slot_page(staff_client):
    slot = SlotFactory(device=DeviceFactory(), product=None, quantity=0, capacity=10)

    response = staff_client.post(
        reverse("admin:inventory_slot_change", args=[slot.pk]), slot_post_data(slot, quantity=2)
    )

    assert response.status_code == 200
    assert "A slot with no product cannot be filled" in response.content.decode()
    assert not StockMovement.objects.exists()


def test_a_slot_quantity_above_capacity_is_refused_on_the_slot_page(staff_client):
    slot = SlotFactory(device=DeviceFactory(), quantity=0, capacity=10)

    response = staff_client.post(
        reverse("admin:inventory_slot_change", args=[slot.pk]), slot_post_data(slot, quantity=11)
    )

    assert response.status_code == 200
    assert "cannot exceed the slot&#x27;s capacity (10)" in response.content.decode()
    assert not StockMovement.objects.exists()


def test_a_slot_added_on_the_slot_page_gets_its_stock_through_the_ledger(staff_client, staff):
    device = DeviceFactory()
    product = Product.objects.create(name="Water", sku="W-1", price="1.00")

    response = staff_client.post(
        reverse("admin:inventory_slot_add"),
        {
            "device": device.pk,
            "number": 7,
            "product": product.pk,
            "quantity": 3,
            "capacity": 6,
            "low_stock_threshold": 1,
            "enabled": "on",
        },
    )

    assert response.status_code == 302
    slot = Slot.objects.get(device=device, number=7)
    assert slot.quantity == 3
    movement = slot.movements.get()
    assert (movement.reason, movement.delta, movement.user) == ("restock", 3, staff)


def test_the_ledger_is_searchable_and_filterable_by_reason(staff_client, online_device):
    slot = Slot.objects.get(device=online_device, number=1)
    move_stock(slot=slot, delta=1, reason=MovementReason.RESTOCK, note="found a box")
    move_stock(slot=slot, delta=-1, reason=MovementReason.ADJUSTMENT)
    url = reverse("admin:inventory_stockmovement_changelist")

    response = staff_client.get(f"{url}?q=box")
    assert [m.note for m in response.context["cl"].result_list] == ["found a box"]
    response = staff_client.get(f"{url}?q=6CC8404FE03C")
    assert len(response.context["cl"].result_list) == 2
    response = staff_client.get(f"{url}?reason__exact=adjustment")
    assert [m.delta for m in response.context["cl"].result_list] == [-1]


def test_the_ledger_refuses_add_change_and_delete(staff_client, online_device):
    slot = Slot.objects.get(device=online_device, number=1)
    movement = move_stock(slot=slot, delta=1, reason=MovementReason.RESTOCK)
    change = reverse("admin:inventory_stockmovement_change", args=[movement.pk])

    assert staff_client.get(reverse("admin:inventory_stockmovement_add")).status_code == 403
    assert staff_client.post(change, {"delta": 99}).status_code == 403
    delete = reverse("admin:inventory_stockmovement_delete", args=[movement.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    page = staff_client.get(change).content.decode()
    assert 'name="_save"' not in page
    movement.refresh_from_db()
    assert movement.delta == 1


def test_adding_a_product_asks_only_name_sku_and_price_and_stamps_created_at(staff_client):
    url = reverse("admin:inventory_product_add")
    assert "created_at" not in staff_client.get(url).context["adminform"].form.fields

    response = staff_client.post(url, {"name": "Water", "sku": "W-1", "price": "1.00"})

    assert response.status_code == 302, response.context["adminform"].form.errors
    product = Product.objects.get(sku="W-1")
    assert product.created_at is not None


def test_a_product_page_shows_created_at_read_only(staff_client):
    product = Product.objects.create(name="Water", sku="W-1", price="1.00")
    created = product.created_at

    response = staff_client.post(
        reverse("admin:inventory_product_change", args=[product.pk]),
        {"name": "Water", "sku": "W-1", "price": "1.00", "created_at_0": "2001-01-01"},
    )

    assert response.status_code == 302
    product.refresh_from_db()
    assert product.created_at == created
    page = staff_client.get(reverse("admin:inventory_product_change", args=[product.pk]))
    assert "Created at" in page.content.decode()
