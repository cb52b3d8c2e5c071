"""The pick-list page and the fill page (``vending_site.dashboard.picklist``) through Django's
test client: who may see them, what they show, and that a fill writes the ledger rows (or,
refused, nothing). The browser tests (tests/browser/test_picklist_in_browser.py) drive them
in Chromium."""

import re

import pytest
from django.test import Client

from inventory import picklist
from inventory.choices import MovementReason
from inventory.models import Slot, StockMovement
from inventory.tests.picklist_data import TODAY, ZONE, build_fleet
from tests.factories import UserFactory, staff_with_role
from vending_site.auth import roles

HARBOUR = "ESP32_000000000002"
DEPOT = "ESP32_000000000009"
FILL = f"/machines/{HARBOUR}/fill"


@pytest.fixture
def driver(db):
    return staff_with_role(roles.DRIVER, username="dora")


@pytest.fixture
def fleet(db, settings, monkeypatch, driver):
    settings.TIME_ZONE = ZONE
    monkeypatch.setattr(picklist, "today", lambda: TODAY)
    return build_fleet(driver=driver)


def browser_as(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def quantities(device_id: str) -> dict[int, int]:
    return dict(Slot.objects.filter(device__device_id=device_id).values_list("number", "quantity"))


def loaded_inputs(html: str) -> dict[str, str]:
    return dict(re.findall(r'name="loaded-(\d+)" value="([^"]*)"', html))


# --- The pick-list page ----------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_log_in(fleet):
    for path in ("/picklist/", FILL):
        response = Client().get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")


def test_the_page_shows_the_first_route_with_the_van_first_then_machines_in_stop_order(
    fleet, staff
):
    response = browser_as(staff).get("/picklist/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Route North" in html
    order = [
        html.index(text) for text in ("For the van", "Bakery front", "Bakery back", "Harbour hall")
    ]
    assert order == sorted(order)
    assert "20 units in all" in html
    assert f'href="/machines/{HARBOUR}/fill"' in html
    assert "/api/v1/picklist?route=" in html and "format=csv" in html
    assert "<script" not in html.split("</head>")[1]  # no inline script in the body


def test_the_page_forecasts_for_a_visit(fleet, staff):
    html = browser_as(staff).get(f"/picklist/?route={fleet.north.pk}&visit=2026-12-10").content

    assert b"Expected sales" in html
    assert b"25 units in all" in html


def test_a_past_visit_is_refused_on_the_page_with_the_reason(fleet, staff):
    response = browser_as(staff).get(f"/picklist/?route={fleet.north.pk}&visit=2026-12-01")

    assert response.status_code == 400
    assert b"visit 2026-12-01 is in the past (today is 2026-12-07)." in response.content


def test_a_viewer_reads_the_page_without_the_fill_links(fleet):
    response = browser_as(staff_with_role(roles.VIEWER)).get(
        f"/picklist/?location={fleet.depot.pk}"
    )

    assert response.status_code == 200
    assert b"Location Depot" in response.content
    assert b"/fill" not in response.content


def test_a_driver_sees_only_their_routes_and_gets_404_for_another(fleet, driver):
    client = browser_as(driver)

    own = client.get("/picklist/")
    other = client.get(f"/picklist/?route={fleet.south.pk}")

    assert own.status_code == 200
    assert b">North</option>" in own.content and b">South</option>" not in own.content
    assert b">Depot</option>" not in own.content
    assert other.status_code == 404


def test_a_staff_account_without_a_role_is_refused_with_the_permission_named(fleet):
    client = browser_as(UserFactory(is_staff=True, vend_client=False))

    for url, perm in (("/picklist/", "inventory.view_slot"), (FILL, "inventory.restock_slot")):
        response = client.get(url)
        assert response.status_code == 403
        assert perm in response.content.decode()


def test_the_pages_are_never_cached(fleet, driver):
    """They show stock as it is now: a phone's back button must not show last week's list."""
    for url in ("/picklist/", FILL):
        assert "no-cache" in browser_as(driver).get(url)["Cache-Control"]


# --- The fill page ---------------------------------------------------------------------------


def test_the_fill_page_prefills_the_units_to_load(fleet, driver):
    response = browser_as(driver).get(FILL)

    assert response.status_code == 200
    assert loaded_inputs(response.content.decode()) == {"1": "7", "2": "0"}


@pytest.mark.parametrize("role", [roles.VIEWER, roles.TECHNICIAN])
def test_viewers_and_technicians_may_not_fill(fleet, role):
    assert browser_as(staff_with_role(role)).get(FILL).status_code == 403


def test_a_driver_gets_404_for_a_machine_off_their_routes(fleet, driver):
    client = browser_as(driver)

    assert client.get(f"/machines/{DEPOT}/fill").status_code == 404
    assert client.post(f"/machines/{DEPOT}/fill", {"loaded-1": "2"}).status_code == 404
    assert client.get("/machines/not-a-machine/fill").status_code == 404
    assert quantities(DEPOT) == {1: 1}


def test_a_fill_writes_one_restock_row_per_slot_and_shows_the_machine_after(fleet, driver):
    client = browser_as(driver)
    before = StockMovement.objects.count()

    response = client.post(FILL, {"loaded-1": "6", "loaded-2": "1"})

    assert response.status_code == 302 and response["Location"] == FILL
    assert quantities(HARBOUR) == {1: 9, 2: 9, 3: 0, 4: 0}
    rows = list(StockMovement.objects.order_by("-id")[:2])
    assert StockMovement.objects.count() == before + 2
    assert sorted((r.slot.number, r.delta, r.quantity_after) for r in rows) == [
        (1, 6, 9),
        (2, 1, 9),
    ]
    assert {(r.reason, r.user, r.note) for r in rows} == {
        (MovementReason.RESTOCK, driver, "fill page")
    }
    after = client.get(FILL).content.decode()
    assert "Recorded 7 units loaded into 2 slots." in after
    assert "9 / 10 in slot" in after
    assert loaded_inputs(after) == {"1": "1", "2": "0"}  # what is left to load


def test_a_refused_fill_names_the_slot_and_writes_nothing(fleet, driver):
    client = browser_as(driver)
    before = StockMovement.objects.count()

    response = client.post(FILL, {"loaded-1": "5", "loaded-2": "3"})  # slot 2 has room for 2

    assert response.status_code == 200  # the form again, with the slot's reason
    html = response.content.decode()
    assert re.search(
        r'loaded-2" value="3".*?aria-invalid="true".*?Slot 2 holds 8 of 10: adding 3 would pass '
        r"its capacity \(room for 2\)\.",
        html,
        re.S,
    )
    assert loaded_inputs(html) == {"1": "5", "2": "3"}  # what was entered, kept
    assert StockMovement.objects.count() == before
    assert quantities(HARBOUR) == {1: 3, 2: 8, 3: 0, 4: 0}


def test_a_fill_that_is_not_a_number_or_empty_writes_nothing(fleet, driver):
    client = browser_as(driver)
    before = StockMovement.objects.count()

    not_a_number = client.post(FILL, {"loaded-1": "2", "loaded-2": "-1"})
    nothing = client.post(FILL, {"loaded-1": "0", "loaded-2": ""})

    assert not_a_number.status_code == 200
    assert b"Slot 2: enter a whole number of units (0 or more)." in not_a_number.content
    assert nothing.status_code == 200
    assert b"Nothing was recorded: enter the units you loaded" in nothing.content
    assert StockMovement.objects.count() == before


def test_a_fill_without_the_csrf_token_is_refused(fleet, driver):
    client = Client(enforce_csrf_checks=True)
    client.force_login(driver)

    response = client.post(FILL, {"loaded-1": "1"})

    assert response.status_code == 403
    assert quantities(HARBOUR)[1] == 3
