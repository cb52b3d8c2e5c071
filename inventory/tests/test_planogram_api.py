"""The planogram over REST: a machine's slots, one slot's edit, the restock endpoint, and
the price a vend charges."""

from decimal import Decimal

import pytest
from django.db.models import Sum
from rest_framework.test import APIClient

from inventory.models import PriceChange, Slot, StockMovement
from tests.factories import UserFactory
from transactions.models import Transaction

DEVICE_ID = "ESP32_6CC8404FE03C"
SLOTS = f"/api/v1/machines/{DEVICE_ID}/slots"
RESTOCK = f"/api/v1/machines/{DEVICE_ID}/restock"


@pytest.fixture
def staff_client(staff, client_for) -> APIClient:
    return client_for(staff)


def quantities(device) -> dict[int, int]:
    return dict(Slot.objects.filter(device=device).values_list("number", "quantity"))


def ledger_sum(slot: Slot) -> int:
    return slot.movements.aggregate(total=Sum("delta"))["total"] or 0


# --- Reading the planogram ----------------------------------------------------------------


def test_the_planogram_lists_every_slot_with_par_price_and_currency(
    online_device, staff_client, settings
):
    settings.CURRENCY = "CHF"
    Slot.objects.filter(device=online_device, number=2).update(par=8, price=Decimal("2.20"))

    response = staff_client.get(SLOTS)

    assert response.status_code == 200
    body = response.json()
    assert body["device_id"] == DEVICE_ID
    assert [slot["slot_id"] for slot in body["slots"]] == [1, 2, 3, 4, 5]
    one, two = body["slots"][:2]
    assert (one["par"], one["fill_to"], one["to_load"]) == (None, 10, 5)
    assert (one["price"], one["price_override"], one["currency"]) == ("1.50", None, "CHF")
    assert one["product"]["currency"] == "CHF"
    assert (two["par"], two["fill_to"], two["to_load"]) == (8, 8, 3)
    assert (two["price"], two["price_override"]) == ("2.20", "2.20")


def test_the_planogram_of_an_unknown_machine_is_404(db, staff_client):
    response = staff_client.get("/api/v1/machines/ESP32_000000000001/slots")

    assert response.status_code == 404
    assert response.json()["code"] == "unknown_device"


def test_reading_the_planogram_costs_a_fixed_number_of_queries(
    online_device, staff_client, django_assert_max_num_queries
):
    with django_assert_max_num_queries(3):
        assert staff_client.get(SLOTS).status_code == 200


# --- Restock --------------------------------------------------------------------------------


def test_restock_adds_the_units_loaded_with_one_ledger_row_per_slot(online_device, staff):
    client = APIClient()
    client.force_authenticate(staff)

    response = client.post(
        RESTOCK, {"loaded": {"1": 5, "3": 2}, "note": "Monday route"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert quantities(online_device) == {1: 10, 2: 5, 3: 7, 4: 5, 5: 5}
    rows = StockMovement.objects.filter(reason="restock").order_by("slot__number")
    assert [(r.slot.number, r.delta, r.quantity_after, r.user, r.note) for r in rows] == [
        (1, 5, 10, staff, "Monday route"),
        (3, 2, 7, staff, "Monday route"),
    ]
    by_number = {slot["slot_id"]: slot for slot in response.json()["slots"]}
    assert (by_number[1]["quantity"], by_number[3]["quantity"]) == (10, 7)
    assert by_number[3]["to_load"] == 3


def test_restock_past_capacity_is_422_naming_the_slot_and_writes_nothing(
    online_device, staff_client
):
    # Slot 1 fits; slot 4 would reach 11 of 10: neither is written.
    response = staff_client.post(RESTOCK, {"loaded": {"1": 3, "4": 6}}, format="json")

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "restock_refused"
    assert list(body["slots"]) == ["4"]
    assert "Slot 4 holds 5 of 10" in body["detail"]
    assert "room for 5" in body["slots"]["4"]
    assert quantities(online_device) == {n: 5 for n in range(1, 6)}
    assert not StockMovement.objects.exists()


def test_restock_of_an_unknown_slot_or_one_without_product_is_422_and_writes_nothing(
    online_device, staff_client
):
    Slot.objects.filter(device=online_device, number=2).update(product=None)

    response = staff_client.post(RESTOCK, {"loaded": {"1": 1, "2": 1, "9": 1}}, format="json")

    assert response.status_code == 422
    slots = response.json()["slots"]
    assert slots == {
        "2": "Slot 2 has no product assigned.",
        "9": f"{DEVICE_ID} has no slot 9.",
    }
    assert not StockMovement.objects.exists()


@pytest.mark.parametrize(
    ("loaded", "slot", "says"),
    [
        ({"1": 0}, "1", "whole number above 0"),
        ({"1": -2}, "1", "whole number above 0"),
        ({"1": 1.5}, "1", "whole number above 0"),
        ({"1": "2"}, "1", "whole number above 0"),
        ({"1": True}, "1", "whole number above 0"),
        ({"1": None}, "1", "whole number above 0"),
        ({"one": 1}, "one", "not a slot number"),
        ({"0": 1}, "0", "not a slot number"),
        ({"99999999999999999999": 1}, "99999999999999999999", "not a slot number"),
    ],
)
def test_a_fill_that_is_not_a_whole_number_of_units_into_a_slot_is_422(
    online_device, staff_client, loaded, slot, says
):
    response = staff_client.post(RESTOCK, {"loaded": loaded}, format="json")

    assert response.status_code == 422, response.content
    assert says in response.json()["slots"][slot]
    assert not StockMovement.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "loaded"),
        ({"loaded": {}}, "loaded"),
        ({"loaded": [1, 2]}, "loaded"),
        ({"loaded": {"1": 1}, "note": "x" * 256}, "note"),
        ({"loaded": {"1": 1}, "extra": 1}, "extra"),
    ],
)
def test_a_malformed_restock_body_is_400_naming_the_field(online_device, staff_client, body, field):
    response = staff_client.post(RESTOCK, body, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert field in response.json()["errors"]
    assert not StockMovement.objects.exists()


def test_a_restock_body_that_is_not_an_object_is_400(online_device, staff_client):
    response = staff_client.post(RESTOCK, [1, 2], format="json")

    assert response.status_code == 400
    assert not StockMovement.objects.exists()


@pytest.mark.parametrize("path", [SLOTS, RESTOCK, f"{SLOTS}/1"])
def test_the_planogram_is_staff_only(online_device, path):
    anonymous = APIClient()
    vend_client = APIClient()
    vend_client.force_authenticate(UserFactory())

    for client, expected in ((anonymous, 401), (vend_client, 403)):
        if path == SLOTS:
            response = client.get(path)
        elif path == RESTOCK:
            response = client.post(path, {"loaded": {"1": 1}}, format="json")
        else:
            response = client.patch(path, {"par": 3}, format="json")
        assert response.status_code == expected, (path, response.content)
        assert response.json()["code"] in {"not_authenticated", "staff_only"}
    assert not StockMovement.objects.exists()
    assert Slot.objects.get(device=online_device, number=1).par is None


def test_a_restock_with_an_api_key_is_403(online_device):
    from rest_framework_api_key.models import APIKey

    _key, secret = APIKey.objects.create_key(name="kiosk")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")

    response = client.post(RESTOCK, {"loaded": {"1": 1}}, format="json")

    assert response.status_code == 403
    assert not StockMovement.objects.exists()


# --- Editing a slot -------------------------------------------------------------------------


def test_patch_changes_only_the_fields_sent(online_device, staff_client):
    response = staff_client.patch(
        f"{SLOTS}/2", {"par": 8, "low_stock_threshold": 3, "enabled": False}, format="json"
    )

    assert response.status_code == 200, response.content
    slot = Slot.objects.get(device=online_device, number=2)
    assert (slot.par, slot.low_stock_threshold, slot.enabled) == (8, 3, False)
    assert (slot.quantity, slot.capacity) == (5, 10)
    assert response.json()["fill_to"] == 8
    assert not StockMovement.objects.exists()


def test_a_par_above_the_capacity_is_422_and_changes_nothing(online_device, staff_client):
    response = staff_client.patch(f"{SLOTS}/2", {"par": 11, "price": "3.00"}, format="json")

    assert response.status_code == 422
    assert response.json()["code"] == "planogram_invalid"
    assert "PAR (11) cannot be above the capacity (10)" in response.json()["detail"]
    slot = Slot.objects.get(device=online_device, number=2)
    assert (slot.par, slot.price) == (None, None)
    assert not PriceChange.objects.exists()


def test_a_capacity_below_the_stock_held_is_422(online_device, staff_client):
    response = staff_client.patch(f"{SLOTS}/2", {"capacity": 4}, format="json")

    assert response.status_code == 422
    assert "holds 5 units" in response.json()["detail"]
    assert Slot.objects.get(device=online_device, number=2).capacity == 10


def test_the_database_refuses_a_par_above_the_capacity(online_device):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Slot.objects.filter(device=online_device, number=1).update(par=11)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"par": -1},
        {"par": "3"},
        {"capacity": 2.5},
        {"price": "-1"},
        {"price": "abc"},
        {"quantity": 3},
        {"product": 999999},
    ],
)
def test_a_malformed_slot_edit_is_400(online_device, staff_client, body):
    response = staff_client.patch(f"{SLOTS}/2", body, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["detail"]


def test_patch_of_a_slot_the_machine_lacks_is_404(online_device, staff_client):
    response = staff_client.patch(f"{SLOTS}/9", {"par": 1}, format="json")

    assert response.status_code == 404
    assert response.json()["detail"] == f"{DEVICE_ID} has no slot 9."


# --- Prices ---------------------------------------------------------------------------------


def test_a_slot_price_is_charged_by_a_vend_and_kept_on_its_transaction(
    online_device, staff, client_for
):
    staff_client = client_for(staff)
    assert staff_client.patch(f"{SLOTS}/3", {"price": "2.40"}, format="json").status_code == 200

    response = client_for(UserFactory()).post(
        "/api/v1/vend/3", {"device_id": DEVICE_ID}, format="json"
    )
    assert response.status_code == 202, response.content
    staff_client.patch(f"{SLOTS}/3", {"price": "9.99"}, format="json")

    assert Transaction.objects.get().price == Decimal("2.40")


def test_without_a_slot_price_a_vend_charges_the_products_price(online_device, client_for):
    response = client_for(UserFactory()).post(
        "/api/v1/vend/1", {"device_id": DEVICE_ID}, format="json"
    )

    assert response.status_code == 202
    assert Transaction.objects.get().price == Decimal("1.50")


def test_a_price_change_is_recorded_with_who_old_and_new(online_device, staff_client, staff):
    staff_client.patch(f"{SLOTS}/3", {"price": "2.40"}, format="json")
    staff_client.patch(f"{SLOTS}/3", {"price": "2.40", "par": 9}, format="json")  # unchanged
    staff_client.patch(f"{SLOTS}/3", {"price": None}, format="json")

    slot = Slot.objects.get(device=online_device, number=3)
    changes = list(PriceChange.objects.order_by("id"))
    assert [(c.slot, c.product, c.old_price, c.new_price, c.user) for c in changes] == [
        (slot, None, None, Decimal("2.40"), staff),
        (slot, None, Decimal("2.40"), None, staff),
    ]
    assert slot.price is None
