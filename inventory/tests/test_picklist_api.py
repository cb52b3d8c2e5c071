"""``GET /api/v1/picklist``: the selection (route, location, machines), per role, the
visit forecast and the CSV, against the hand-computed fleet of ``picklist_data``."""

import csv
import io

import pytest
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from devices.models import Device, Location
from inventory import picklist
from inventory.models import Product
from inventory.tests.picklist_data import TODAY, ZONE, build_fleet
from tests.factories import UserFactory, staff_with_role
from vending_site.auth import roles

URL = "/api/v1/picklist"


@pytest.fixture
def driver(db):
    return staff_with_role(roles.DRIVER, username="dora")


@pytest.fixture
def fleet(db, settings, monkeypatch, driver):
    settings.TIME_ZONE = ZONE
    monkeypatch.setattr(picklist, "today", lambda: TODAY)
    return build_fleet(driver=driver)


def as_user(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def machines(body) -> list[str]:
    return [machine["device_id"] for machine in body["machines"]]


# --- Per role ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [roles.OPERATOR, roles.TECHNICIAN, roles.VIEWER])
def test_operators_technicians_and_viewers_read_any_routes_pick_list(fleet, role):
    client = as_user(staff_with_role(role))

    north = client.get(URL, {"route": fleet.north.pk})
    south = client.get(URL, {"route": fleet.south.pk})

    assert north.status_code == 200, north.json()
    assert north.json()["to_load"] == 20
    assert south.status_code == 200
    assert machines(south.json()) == ["ESP32_000000000002"]


def test_a_driver_reads_the_pick_list_of_their_own_route(fleet, driver):
    response = as_user(driver).get(URL, {"route": fleet.north.pk})

    assert response.status_code == 200
    assert machines(response.json()) == [
        "ESP32_000000000001",
        "ESP32_000000000003",
        "ESP32_000000000002",
    ]


def test_a_driver_gets_404_for_another_route_and_its_machines(fleet, driver):
    client = as_user(driver)

    other_route = client.get(URL, {"route": fleet.south.pk})
    other_location = client.get(URL, {"location": fleet.depot.pk})
    other_machine = client.get(URL, {"machine": "ESP32_000000000009"})

    assert (other_route.status_code, other_route.json()["detail"]) == (
        404,
        f"No route {fleet.south.pk}.",
    )
    assert other_location.status_code == 404
    assert other_machine.status_code == 404
    assert other_machine.json()["detail"] == "No machine ESP32_000000000009 is registered."


def test_a_driver_reads_a_location_and_machines_on_their_route(fleet, driver):
    client = as_user(driver)

    location = client.get(URL, {"location": fleet.harbour.pk})
    named = client.get(URL + "?machine=ESP32_000000000003&machine=esp32_000000000001")

    assert machines(location.json()) == ["ESP32_000000000002"]
    assert machines(named.json()) == ["ESP32_000000000001", "ESP32_000000000003"]


def test_a_staff_account_without_a_role_anonymous_and_api_keys_are_refused(fleet):
    no_role = as_user(UserFactory(is_staff=True, vend_client=False)).get(URL, {"route": 1})
    anonymous = APIClient().get(URL, {"route": fleet.north.pk})
    keyed = APIClient()
    keyed.credentials(HTTP_AUTHORIZATION=f"Api-Key {APIKey.objects.create_key(name='k')[1]}")

    assert no_role.status_code == 403
    assert "inventory.view_slot" in no_role.json()["detail"]
    assert anonymous.status_code in (401, 403)
    assert keyed.get(URL, {"route": fleet.north.pk}).status_code in (401, 403)


# --- The body --------------------------------------------------------------------------------


def test_the_json_holds_slots_totals_and_the_forecast_for_a_visit(fleet, staff):
    response = as_user(staff).get(URL, {"route": fleet.north.pk, "visit": "2026-12-10"})

    assert response.status_code == 200
    body = response.json()
    assert (body["today"], body["visit"], body["days_until_visit"]) == (
        "2026-12-07",
        "2026-12-10",
        3,
    )
    assert body["sales_window"] == {"from": "2026-11-09", "to": "2026-12-06"}
    assert body["to_load"] == 25
    assert body["totals"] == [
        {"product": "Chips", "sku": "CHIPS", "slots": 1, "to_load": 0, "expected_by_visit": 0.0},
        {"product": "Cola", "sku": "COLA", "slots": 2, "to_load": 17, "expected_by_visit": 4.5},
        {"product": "Water", "sku": "WATER", "slots": 2, "to_load": 8, "expected_by_visit": 1.2},
    ]
    harbour = body["machines"][2]
    assert (harbour["name"], harbour["location"], harbour["stop"], harbour["to_load"]) == (
        "Harbour hall",
        "Harbour",
        2,
        9,
    )
    assert harbour["slots"][0] == {
        "slot": 1,
        "product": "Cola",
        "sku": "COLA",
        "quantity": 3,
        "capacity": 10,
        "fill_to": 10,
        "to_load": 9,
        "sold_28d": 14,
        "daily_average": 0.5,
        "expected_by_visit": 1.5,
        "at_visit": 1,
    }


def test_without_a_visit_the_forecast_fields_are_null(fleet, staff):
    body = as_user(staff).get(URL, {"location": fleet.bakery.pk}).json()

    assert (body["visit"], body["days_until_visit"], body["sales_window"]) == (None, None, None)
    first = body["machines"][0]["slots"][0]
    assert (first["to_load"], first["sold_28d"], first["expected_by_visit"]) == (8, None, None)


@pytest.mark.parametrize("how", ["query", "accept"])
def test_the_csv_parses_back_to_the_same_numbers(fleet, staff, how):
    client = as_user(staff)
    params = {"route": fleet.north.pk, "visit": "2026-12-10"}
    if how == "query":
        response = client.get(URL, {**params, "format": "csv"})
    else:
        response = client.get(URL, params, HTTP_ACCEPT="text/csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="picklist-route-' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    van = [
        (r["product"], int(r["to_load"]), r["expected_by_visit"]) for r in rows if r["row"] == "van"
    ]
    slots = [
        (r["device_id"], int(r["slot"]), int(r["to_load"]), r["at_visit"], r["stop"])
        for r in rows
        if r["row"] == "slot"
    ]
    assert van == [("Chips", 0, "0.0"), ("Cola", 17, "4.5"), ("Water", 8, "1.2")]
    assert slots == [
        ("ESP32_000000000001", 1, 8, "0", "1"),
        ("ESP32_000000000001", 2, 7, "3", "1"),
        ("ESP32_000000000003", 1, 1, "11", "1"),
        ("ESP32_000000000002", 1, 9, "1", "2"),
        ("ESP32_000000000002", 2, 0, "8", "2"),
    ]


def test_the_csv_writes_names_that_look_like_formulas_as_text(fleet, staff):
    # Names a Technician (machine) or an Operator's colleague (product) may type.
    Device.objects.filter(device_id="ESP32_000000000001").update(name="+1")
    Location.objects.filter(name="Bakery").update(name="-2+3")
    Product.objects.filter(sku="COLA").update(name='=HYPERLINK("http://x")')

    response = as_user(staff).get(URL, {"route": fleet.north.pk, "format": "csv"})

    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    first = next(r for r in rows if r["device_id"] == "ESP32_000000000001")
    assert (first["machine"], first["location"]) == ("'+1", "'-2+3")
    assert '\'=HYPERLINK("http://x")' in {r["product"] for r in rows if r["row"] == "van"}
    assert int(first["to_load"]) == 8  # numbers stay numbers


# --- Bad requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ("", 400, "Give exactly one of route, location or machine (repeated), got none."),
        (
            "route=1&location=1",
            400,
            "Give exactly one of route, location or machine (repeated), got route and location.",
        ),
        ("route=abc", 400, "route must be the route's id (a whole number), not 'abc'."),
        ("location=99999999999", 400, None),
        ("route=424242", 404, "No route 424242."),
        ("location=424242", 404, "No location 424242."),
        ("machine=ESP32_00000000ABCD", 404, "No machine ESP32_00000000ABCD is registered."),
        ("machine=not%20a%20device", 400, None),
        (
            "route=ROUTE&visit=2026-12-06",
            400,
            "visit 2026-12-06 is in the past (today is 2026-12-07).",
        ),
        ("route=ROUTE&visit=soon", 400, "visit must be a date as YYYY-MM-DD, not 'soon'."),
        ("route=ROUTE&format=xml", 400, "format must be json or csv, not 'xml'."),
    ],
)
def test_a_bad_selection_is_refused_naming_the_problem(fleet, staff, query, status, detail):
    response = as_user(staff).get(f"{URL}?{query.replace('ROUTE', str(fleet.north.pk))}")

    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    if detail is not None:
        assert response.json()["detail"] == detail


def test_too_many_machines_are_refused(fleet, staff):
    query = "&".join(f"machine=ESP32_{n:012X}" for n in range(101))

    response = as_user(staff).get(f"{URL}?{query}")

    assert response.status_code == 400
    assert response.json()["detail"] == "At most 100 machines per pick list, not 101."


def test_the_pick_list_reads_in_a_bounded_number_of_queries(
    fleet, staff, django_assert_max_num_queries
):
    client = as_user(staff)
    with django_assert_max_num_queries(6):
        assert client.get(URL, {"route": fleet.north.pk, "visit": "2026-12-10"}).status_code == 200
