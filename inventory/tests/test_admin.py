"""The inventory admin: products, slots (stock changes only through the ledger), the ledger."""

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices.models import Location, Route, RouteStop
from inventory.admin import SlotForm, slot_form_for
from inventory.choices import MovementReason
from inventory.models import Product, Slot, StockMovement
from inventory.services import move_stock
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from vending_site.auth import roles

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


# --- What a role may read and write through the admin ------------------------------------


def logged_in(client, role):
    user = staff_with_role(role)
    client.force_login(user)
    return user


PRICE_LOOKUPS = [
    ("inventory_product", "price__gte"),
    ("inventory_product", "price__lt"),
    ("inventory_slot", "price__gte"),
    ("inventory_slot", "product__price__gte"),
    ("inventory_slot", "price__isnull"),
]


@pytest.mark.parametrize("role", [roles.DRIVER, roles.TECHNICIAN])
@pytest.mark.parametrize(("model", "lookup"), PRICE_LOOKUPS)
def test_who_does_not_see_prices_may_not_filter_lists_by_price(client, role, model, lookup):
    # Narrowing the list to "price >= x" and bisecting would tell the price to the cent.
    logged_in(client, role)
    SlotFactory(product=ProductFactory(name="Secret cola", price=Decimal("2.35")))
    url = reverse(f"admin:{model}_changelist")

    cheap = client.get(url, {lookup: "2.35" if "isnull" not in lookup else "False"})
    dear = client.get(url, {lookup: "2.36" if "isnull" not in lookup else "True"})

    assert client.get(url).status_code == 200
    assert cheap.status_code == dear.status_code == 400
    assert "Secret cola" not in cheap.content.decode() + dear.content.decode()


@pytest.mark.parametrize("role", [roles.DRIVER, roles.TECHNICIAN])
def test_who_does_not_see_prices_may_not_export_products_filtered_by_price(client, role):
    logged_in(client, role)
    ProductFactory(name="Secret cola", sku="SECRET-1", price=Decimal("2.35"))
    url = reverse("admin:inventory_product_export") + "?price__gte=2.35"

    response = client.post(url, {"format": "0", "resource": "0", "productresource_sku": "on"})

    assert response.status_code == 400
    assert b"SECRET-1" not in response.content


@pytest.mark.parametrize("role", [roles.DRIVER, roles.TECHNICIAN])
def test_who_does_not_see_prices_may_not_sort_products_by_price(client, role):
    logged_in(client, role)
    ProductFactory(name="Dear", price=Decimal("9.00"))
    ProductFactory(name="Cheap", price=Decimal("1.00"))
    url = reverse("admin:inventory_product_changelist")

    # ?o= indexes the columns shown; the price column is not one of theirs.
    response = client.get(url, {"o": "2"})

    assert response.status_code == 200
    assert "price" not in str(response.context["cl"].queryset.query.order_by)


def test_an_operator_still_filters_products_and_slots_by_price(client):
    logged_in(client, roles.OPERATOR)
    SlotFactory(product=ProductFactory(name="Secret cola", price=Decimal("2.35")))

    def listed(model: str, **lookup) -> int:
        response = client.get(reverse(f"admin:{model}_changelist"), lookup)
        assert response.status_code == 200
        return len(response.context["cl"].result_list)

    assert listed("inventory_product", price__gte="2.35") == 1
    assert listed("inventory_product", price__gte="2.36") == 0
    assert listed("inventory_slot", price__isnull="True") == 1


def test_a_technician_sees_the_slot_quantity_read_only_and_cannot_restock_through_it(client):
    tech = logged_in(client, roles.TECHNICIAN)
    assert tech.has_perm("inventory.change_slot") and not tech.has_perm("inventory.restock_slot")
    slot = SlotFactory(device=DeviceFactory(), quantity=1, capacity=10)
    url = reverse("admin:inventory_slot_change", args=[slot.pk])

    page = client.get(url)
    response = client.post(url, slot_post_data(slot, quantity=9, capacity=12, stock_note="x"))

    html = page.content.decode()
    assert 'name="quantity"' not in html and 'name="stock_note"' not in html
    assert "quantity" not in page.context["adminform"].form.fields
    assert response.status_code == 302  # the other settings are still theirs to change
    slot.refresh_from_db()
    assert (slot.quantity, slot.capacity) == (1, 12)
    assert not StockMovement.objects.filter(slot=slot).exists()


def test_the_slot_form_refuses_a_changed_quantity_to_who_may_not_restock(rf):
    slot = SlotFactory(device=DeviceFactory(), quantity=1, capacity=10)
    request = rf.get("/")
    request.user = staff_with_role(roles.TECHNICIAN)
    form_class = slot_form_for(request, SlotForm)
    data = {**slot_post_data(slot, quantity=9), "device": slot.device_id, "number": slot.number}

    form = form_class(data, instance=slot)

    assert not form.is_valid()
    assert "restock permission" in form.errors["quantity"][0]
    request.user = staff_with_role(roles.OPERATOR)
    assert slot_form_for(request, SlotForm)(data, instance=slot).is_valid()


def test_a_drivers_slot_filter_lists_only_their_routes_machines(client):
    driver = logged_in(client, roles.DRIVER)
    mine, theirs = Location.objects.create(name="Mine"), Location.objects.create(name="Theirs")
    route = Route.objects.create(name="Monday", driver=driver)
    RouteStop.objects.create(route=route, location=mine, position=1)
    SlotFactory(device=DeviceFactory(name="Lobby machine", location=mine))
    SlotFactory(device=DeviceFactory(name="Lobby snacks", location=mine))
    SlotFactory(device=DeviceFactory(name="Competitor lobby", location=theirs))

    page = client.get(reverse("admin:inventory_slot_changelist"))

    specs = page.context["cl"].filter_specs
    [devices] = [s for s in specs if getattr(s, "field_path", None) == "device"]
    assert sorted(label for _, label in devices.lookup_choices) == ["Lobby machine", "Lobby snacks"]
    assert "Competitor lobby" not in page.content.decode()
