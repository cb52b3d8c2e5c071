"""Products, the stock ledger and a planogram copy over REST, per role: Operator, Driver,
Technician and Viewer, each allowed and refused."""

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission

from devices.models import Location, Route, RouteStop
from inventory.choices import MovementReason
from inventory.models import PriceChange, Product, Slot, StockMovement
from inventory.services import ensure_slots, move_stock
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory, staff_with_role
from vending_site.auth import roles

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products"
MOVEMENTS = "/api/v1/stock-movements"


@pytest.fixture
def as_role(client_for):
    def make(role: str):
        return client_for(staff_with_role(role))

    return make


@pytest.fixture
def cola():
    return ProductFactory(name="Cola Zero", sku="COLA-0", price=Decimal("1.80"))


# --- Products: reading ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "sees_price"),
    [
        (roles.OPERATOR, True),
        (roles.VIEWER, True),
        (roles.DRIVER, False),
        (roles.TECHNICIAN, False),
    ],
)
def test_every_role_reads_products_and_only_money_readers_see_prices(
    as_role, cola, role, sees_price, settings
):
    settings.CURRENCY = "CHF"
    client = as_role(role)

    listed = client.get(PRODUCTS)
    one = client.get(f"{PRODUCTS}/{cola.pk}")

    assert listed.status_code == one.status_code == 200
    assert listed.json()["count"] == 1
    body = one.json()
    assert (body["id"], body["name"], body["sku"]) == (cola.pk, "Cola Zero", "COLA-0")
    if sees_price:
        assert (body["price"], body["currency"]) == ("1.80", "CHF")
    else:
        assert "price" not in body and "currency" not in body
        assert "price" not in listed.json()["results"][0]


def test_a_staff_account_with_no_role_reads_no_products(client_for, cola):
    client = client_for(UserFactory(is_staff=True, vend_client=False))

    response = client.get(PRODUCTS)

    assert response.status_code == 403
    assert "inventory.view_product" in response.json()["detail"]


def test_an_api_key_client_reads_no_products(client_for, cola):
    assert client_for(UserFactory()).get(PRODUCTS).status_code == 403  # not staff


def test_products_are_searched_by_name_or_sku_in_any_case(as_role, cola):
    ProductFactory(name="Water", sku="AQUA-1")
    ProductFactory(name="Sparkling water", sku="SPARK")
    client = as_role(roles.OPERATOR)

    def names(search):
        results = client.get(PRODUCTS, {"search": search}).json()["results"]
        return [row["name"] for row in results]

    assert names("WATER") == ["Sparkling water", "Water"]
    assert names("aqua") == ["Water"]
    assert names("nothing") == []
    assert client.get(PRODUCTS, {"search": "x" * 101}).status_code == 400


def test_listing_products_costs_the_same_queries_for_few_or_many(
    as_role, django_assert_num_queries
):
    client = as_role(roles.VIEWER)
    ProductFactory()
    client.get(PRODUCTS)  # the role's permissions are cached from here on
    with django_assert_num_queries(2) as few:  # the count, the page
        client.get(PRODUCTS)
    for _ in range(20):
        ProductFactory()
    with django_assert_num_queries(len(few.captured_queries)):
        assert len(client.get(PRODUCTS).json()["results"]) == 21


def test_an_unknown_product_is_404(as_role):
    response = as_role(roles.OPERATOR).get(f"{PRODUCTS}/999999")
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


# --- Products: writing ----------------------------------------------------------------------


def test_an_operator_creates_a_product_and_its_first_price_is_recorded(client_for):
    operator = staff_with_role(roles.OPERATOR)

    response = client_for(operator).post(
        PRODUCTS, {"name": "Water", "sku": "W-05", "price": "1.20"}, format="json"
    )

    assert response.status_code == 201, response.content
    product = Product.objects.get(sku="W-05")
    assert response.json()["id"] == product.pk
    change = PriceChange.objects.get(product=product)
    assert (change.old_price, change.new_price, change.user) == (None, Decimal("1.20"), operator)


@pytest.mark.parametrize("role", [roles.DRIVER, roles.TECHNICIAN, roles.VIEWER])
def test_other_roles_may_not_create_change_or_delete_products(as_role, cola, role):
    client = as_role(role)

    created = client.post(PRODUCTS, {"name": "W", "sku": "W", "price": "1.00"}, format="json")
    patched = client.patch(f"{PRODUCTS}/{cola.pk}", {"name": "Cola"}, format="json")
    deleted = client.delete(f"{PRODUCTS}/{cola.pk}")

    assert (created.status_code, patched.status_code, deleted.status_code) == (403, 403, 403)
    cola.refresh_from_db()
    assert (cola.name, Product.objects.count()) == ("Cola Zero", 1)


def test_an_operator_changes_a_price_and_the_change_is_recorded(client_for, cola):
    operator = staff_with_role(roles.OPERATOR)

    response = client_for(operator).patch(f"{PRODUCTS}/{cola.pk}", {"price": "2.00"}, format="json")

    assert response.status_code == 200
    assert response.json()["price"] == "2.00"
    change = PriceChange.objects.get(product=cola)
    assert (change.old_price, change.new_price, change.user) == (
        Decimal("1.80"),
        Decimal("2.00"),
        operator,
    )


def test_changing_a_price_needs_change_price_but_other_fields_do_not(client_for, cola):
    editor = UserFactory(is_staff=True, vend_client=False)
    editor.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="inventory", codename__in=["view_product", "change_product"]
        )
    )
    client = client_for(editor)

    refused = client.patch(f"{PRODUCTS}/{cola.pk}", {"price": "0.10"}, format="json")
    renamed = client.patch(
        f"{PRODUCTS}/{cola.pk}", {"name": "Cola", "price": "1.80"}, format="json"
    )

    assert refused.status_code == 403
    assert "inventory.change_price" in refused.json()["detail"]
    assert renamed.status_code == 200
    cola.refresh_from_db()
    assert (cola.name, cola.price) == ("Cola", Decimal("1.80"))
    assert not PriceChange.objects.exists()


def test_put_replaces_all_three_fields_and_refuses_a_missing_one(as_role, cola):
    client = as_role(roles.OPERATOR)

    missing = client.put(f"{PRODUCTS}/{cola.pk}", {"name": "Cola"}, format="json")
    replaced = client.put(
        f"{PRODUCTS}/{cola.pk}", {"name": "Cola", "sku": "C-1", "price": "1.90"}, format="json"
    )

    assert missing.status_code == 400
    assert set(missing.json()["errors"]) == {"sku", "price"}
    assert replaced.status_code == 200
    cola.refresh_from_db()
    assert (cola.name, cola.sku, cola.price) == ("Cola", "C-1", Decimal("1.90"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "W", "sku": "COLA-0", "price": "1.00"}, "sku"),
        ({"name": "W", "sku": "W", "price": "-1.00"}, "price"),
        ({"name": "W", "sku": "W", "price": "1.005"}, "price"),
        ({"name": "W", "sku": "W", "price": "abc"}, "price"),
        ({"name": "", "sku": "W", "price": "1.00"}, "name"),
        ({"name": "W", "sku": "W", "price": "1.00", "colour": "red"}, "colour"),
    ],
    ids=[
        "duplicate sku",
        "negative price",
        "fraction of a cent",
        "not a price",
        "no name",
        "extra",
    ],
)
def test_a_bad_product_is_refused_with_400_naming_the_field(as_role, cola, body, field):
    response = as_role(roles.OPERATOR).post(PRODUCTS, body, format="json")

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert Product.objects.count() == 1


def test_a_product_in_slots_is_not_deleted_and_the_409_names_the_slots(as_role, cola):
    device = DeviceFactory(device_id="ESP32_0000000000C1")
    SlotFactory(device=device, number=3, product=cola)

    response = as_role(roles.OPERATOR).delete(f"{PRODUCTS}/{cola.pk}")

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "product_in_use"
    assert "ESP32_0000000000C1 slot 3" in body["detail"]
    assert body["slots"] == [{"device_id": "ESP32_0000000000C1", "slot": 3}]
    assert Product.objects.filter(pk=cola.pk).exists()


def test_an_operator_deletes_a_product_no_slot_holds(as_role):
    client = as_role(roles.OPERATOR)
    created = client.post(PRODUCTS, {"name": "Typo", "sku": "TYPO", "price": "1"}, format="json")

    response = client.delete(f"{PRODUCTS}/{created.json()['id']}")

    assert response.status_code == 204
    assert not Product.objects.exists()


# --- Stock movements ------------------------------------------------------------------------


def _on_route(device, driver):
    location = Location.objects.create(name=f"at {device.device_id}")
    device.location = location
    device.save(update_fields=["location"])
    route = Route.objects.create(name=f"route of {device.device_id}", driver=driver)
    RouteStop.objects.create(route=route, location=location, position=1)


@pytest.fixture
def ledger():
    """Two machines: A (slots 1, 2) and B (slot 1), with movements at known moments."""
    a = DeviceFactory(device_id="ESP32_00000000000A")
    b = DeviceFactory(device_id="ESP32_00000000000B")
    tea = ProductFactory(sku="TEA")
    a1 = SlotFactory(device=a, number=1, product=tea, quantity=0)
    a2 = SlotFactory(device=a, number=2, quantity=0)
    b1 = SlotFactory(device=b, number=1, product=tea, quantity=0)
    zurich = ZoneInfo("Europe/Zurich")
    moves = [
        (a1, 5, MovementReason.RESTOCK, datetime(2026, 3, 1, 23, 30, tzinfo=zurich)),
        (a1, -1, MovementReason.VEND, datetime(2026, 3, 2, 0, 30, tzinfo=zurich)),
        (a2, 4, MovementReason.RESTOCK, datetime(2026, 3, 2, 12, 0, tzinfo=zurich)),
        (b1, 3, MovementReason.RESTOCK, datetime(2026, 3, 2, 23, 59, tzinfo=zurich)),
        (b1, -1, MovementReason.ADJUSTMENT, datetime(2026, 3, 3, 0, 0, tzinfo=zurich)),
    ]
    ids = []
    for slot, delta, reason, when in moves:
        movement = move_stock(slot=slot, delta=delta, reason=reason)
        StockMovement.objects.filter(pk=movement.pk).update(created_at=when)
        ids.append(movement.pk)
    return {"a": a, "b": b, "tea": tea, "ids": ids}


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


@pytest.mark.parametrize("role", [roles.OPERATOR, roles.TECHNICIAN, roles.VIEWER])
def test_every_reading_role_sees_the_whole_ledger_newest_first(as_role, ledger, role):
    response = as_role(role).get(MOVEMENTS)

    assert _ids(response) == ledger["ids"][::-1]
    first = response.json()["results"][-1]
    assert (first["machine"], first["slot"], first["delta"], first["quantity_after"]) == (
        "ESP32_00000000000A",
        1,
        5,
        5,
    )
    assert (first["reason"], first["product"], first["transaction"]) == (
        "restock",
        ledger["tea"].pk,
        None,
    )


def test_a_driver_sees_only_the_movements_of_their_routes_machines(client_for, ledger):
    driver = staff_with_role(roles.DRIVER)
    _on_route(ledger["b"], driver)
    _on_route(ledger["a"], staff_with_role(roles.DRIVER))  # somebody else's route
    client = client_for(driver)

    assert _ids(client.get(MOVEMENTS)) == ledger["ids"][:2:-1]
    assert _ids(client.get(MOVEMENTS, {"machine": "ESP32_00000000000A"})) == []


def test_a_staff_account_with_no_role_reads_no_ledger(client_for, ledger):
    client = client_for(UserFactory(is_staff=True, vend_client=False))
    assert client.get(MOVEMENTS).status_code == 403


def test_the_ledger_filters_by_machine_slot_product_and_reason(as_role, ledger):
    client = as_role(roles.VIEWER)
    ids = ledger["ids"]

    assert _ids(client.get(MOVEMENTS, {"machine": "esp32_00000000000a"})) == ids[2::-1]
    assert _ids(client.get(MOVEMENTS, {"machine": "ESP32_00000000000A", "slot": 2})) == [ids[2]]
    assert _ids(client.get(MOVEMENTS, {"product": ledger["tea"].pk})) == [
        ids[4],
        ids[3],
        ids[1],
        ids[0],
    ]
    assert _ids(client.get(MOVEMENTS, {"reason": "restock"})) == [ids[3], ids[2], ids[0]]


def test_the_ledger_filters_by_whole_days_in_the_server_time_zone(as_role, ledger, settings):
    settings.TIME_ZONE = "Europe/Zurich"
    client = as_role(roles.VIEWER)
    ids = ledger["ids"]

    assert _ids(client.get(MOVEMENTS, {"from": "2026-03-02", "to": "2026-03-02"})) == [
        ids[3],
        ids[2],
        ids[1],
    ]
    assert _ids(client.get(MOVEMENTS, {"to": "2026-03-01"})) == [ids[0]]
    assert _ids(client.get(MOVEMENTS, {"from": "2026-03-03"})) == [ids[4]]


def test_the_ledger_is_paginated(as_role, ledger):
    body = as_role(roles.VIEWER).get(MOVEMENTS, {"limit": 2}).json()
    assert body["count"] == 5
    assert [row["id"] for row in body["results"]] == ledger["ids"][:2:-1][:2]
    assert "offset=2" in body["next"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"slot": "1"}, "slot needs machine"),
        ({"machine": "ESP32_00000000000A", "slot": "0"}, "slot must be"),
        ({"product": "x"}, "product must be"),
        ({"reason": "theft"}, "reason must be one of"),
        ({"from": "2026-3-1"}, "from must be a date"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "is after to"),
        ({"to": "9999-12-31"}, "to must be a date from 2000-01-01 to 9998-12-31"),
        ({"machine": "not a machine!"}, "Invalid device id"),
    ],
)
def test_a_bad_ledger_filter_is_400_naming_it(as_role, ledger, params, named):
    response = as_role(roles.VIEWER).get(MOVEMENTS, params)

    assert response.status_code == 400
    assert named in response.json()["detail"]


def test_a_ledger_from_year_one_east_of_utc_is_400_not_an_overflow(as_role, settings):
    settings.TIME_ZONE = "Europe/Zurich"  # 0001-01-01 00:00 there is year 0 in UTC

    response = as_role(roles.OPERATOR).get(MOVEMENTS, {"from": "0001-01-01"})

    assert response.status_code == 400
    assert response.json()["detail"] == (
        "from must be a date from 2000-01-01 to 9998-12-31, not '0001-01-01'."
    )


def test_the_ledger_costs_the_same_queries_for_few_or_many_rows(
    as_role, ledger, django_assert_num_queries
):
    client = as_role(roles.VIEWER)
    client.get(MOVEMENTS)
    with django_assert_num_queries(2) as few:  # the count, the page
        client.get(MOVEMENTS)
    slot = Slot.objects.get(device=ledger["b"], number=1)
    for i in range(10):  # each by another user, so the user is not one row read again
        move_stock(slot=slot, delta=(-1) ** i, reason=MovementReason.RESTOCK, user=UserFactory())
    with django_assert_num_queries(len(few.captured_queries)):
        assert len(client.get(MOVEMENTS).json()["results"]) == 15


# --- Copying a planogram --------------------------------------------------------------------


@pytest.fixture
def machines():
    source = DeviceFactory(device_id="ESP32_0000000000D1", slot_count=2)
    target = DeviceFactory(device_id="ESP32_0000000000D2", slot_count=3)
    ensure_slots(device=target, count=1)
    SlotFactory(device=source, number=1, quantity=0, capacity=6, price=Decimal("2.50"))
    SlotFactory(device=source, number=2, quantity=0, capacity=4)
    return source, target


def _copy(client, source="ESP32_0000000000D1", to=("ESP32_0000000000D2",)):
    return client.post(f"/api/v1/machines/{source}/planogram/copy", {"to": list(to)}, format="json")


def test_an_operator_copies_a_planogram_and_hears_which_slots_were_skipped(client_for, machines):
    operator = staff_with_role(roles.OPERATOR)

    response = _copy(client_for(operator))

    assert response.status_code == 200, response.content
    assert response.json() == {
        "source": "ESP32_0000000000D1",
        "machines": [
            {"device_id": "ESP32_0000000000D2", "copied": [1], "skipped": [2], "price_changes": 1}
        ],
    }
    slot = Slot.objects.get(device=machines[1], number=1)
    assert (slot.capacity, slot.price, slot.quantity) == (6, Decimal("2.50"), 0)
    assert PriceChange.objects.get(slot=slot).user == operator


@pytest.mark.parametrize("role", [roles.DRIVER, roles.TECHNICIAN, roles.VIEWER])
def test_other_roles_may_not_copy_a_planogram(as_role, machines, role):
    response = _copy(as_role(role))

    assert response.status_code == 403
    assert Slot.objects.get(device=machines[1], number=1).capacity == 10


def test_a_copy_onto_a_fuller_slot_is_422_naming_it_and_nothing_is_copied(as_role, machines):
    target = machines[1]
    slot = Slot.objects.get(device=target, number=1)
    Slot.objects.filter(pk=slot.pk).update(product=ProductFactory(sku="FULL"))
    move_stock(slot=slot, delta=8, reason=MovementReason.RESTOCK)

    response = _copy(as_role(roles.OPERATOR))

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "planogram_copy_refused"
    assert body["slots"] == {
        "ESP32_0000000000D2": {
            "1": "ESP32_0000000000D2 slot 1 holds 8 units, more than the copied capacity (6)."
        }
    }
    assert Slot.objects.get(pk=slot.pk).capacity == 10


def test_a_copy_that_would_relabel_units_is_422_naming_the_slot_and_writes_nothing(
    as_role, machines
):
    target = machines[1]
    slot = Slot.objects.get(device=target, number=1)
    Slot.objects.filter(pk=slot.pk).update(product=ProductFactory(sku="TEA"))
    move_stock(slot=slot, delta=1, reason=MovementReason.RESTOCK)
    cola = Slot.objects.get(device=machines[0], number=1).product

    response = _copy(as_role(roles.OPERATOR))

    assert response.status_code == 422, response.content
    assert response.json()["slots"] == {
        "ESP32_0000000000D2": {
            "1": "ESP32_0000000000D2 slot 1 holds 1 units of another product: empty it "
            f"before copying {cola} onto it."
        }
    }
    slot.refresh_from_db()
    assert (slot.product.sku, slot.quantity, slot.capacity) == ("TEA", 1, 10)
    assert slot.movements.count() == 1 and not PriceChange.objects.exists()


@pytest.mark.parametrize(
    ("source", "to", "status"),
    [
        ("ESP32_0000000000D1", ["ESP32_0000000000EE"], 404),
        ("ESP32_0000000000EE", ["ESP32_0000000000D2"], 404),
        ("ESP32_0000000000D1", ["ESP32_0000000000D1"], 400),
        ("ESP32_0000000000D1", [], 400),
        ("ESP32_0000000000D1", ["bad id!"], 400),
    ],
)
def test_a_copy_to_an_unknown_bad_or_same_machine_is_refused(as_role, machines, source, to, status):
    assert _copy(as_role(roles.OPERATOR), source, to).status_code == status
    assert not PriceChange.objects.exists()
