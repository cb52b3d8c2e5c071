"""The pick-list page and the fill page in real headless Chromium, against the real server:
desktop, a 390 px phone and paper (print media), with the hand-computed fleet of
``inventory.tests.picklist_data``."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from inventory.choices import MovementReason
from inventory.models import Slot, StockMovement
from inventory.tests.picklist_data import ZONE, build_fleet
from tests.browser.conftest import STAFF_PASSWORD, log_in, serve, with_server_password
from tests.factories import staff_with_role
from vending_site.auth import roles

HARBOUR = "ESP32_000000000002"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture
def server_url(transactional_db):
    """The real server, in the time zone the fleet's sales were placed in."""
    yield from serve(DASHBOARD_PUBLIC="false", TIME_ZONE=ZONE)


@pytest.fixture
def driver(transactional_db):
    return with_server_password(staff_with_role(roles.DRIVER, username="dora"))


@pytest.fixture
def today():
    return datetime.now(ZoneInfo(ZONE)).date()


@pytest.fixture
def fleet(driver, today):
    return build_fleet(driver=driver, today=today)


def assert_no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px wide)"


def test_the_pick_list_on_a_desktop_on_paper_and_on_a_phone(
    server_url, staff_user, fleet, today, page, screenshot
):
    visit = (today + timedelta(days=3)).isoformat()
    log_in(page, server_url, staff_user.username, STAFF_PASSWORD, next_path="/picklist/")
    page.goto(f"{server_url}/picklist/?route={fleet.north.pk}&visit={visit}")

    expect(page.get_by_role("heading", name="Route North")).to_be_visible()
    expect(page.get_by_text("25 units in all")).to_be_visible()
    van = page.locator(".picklist-van tbody tr")
    expect(van).to_have_count(3)
    expect(van.nth(1)).to_contain_text("Cola")
    expect(van.nth(1).locator(".load")).to_have_text("17")
    headings = page.locator(".picklist-machine .panel__title")
    expect(headings).to_have_count(3)
    for n, name in enumerate(("Bakery front", "Bakery back", "Harbour hall")):
        expect(headings.nth(n)).to_contain_text(name)
    expect(page.get_by_role("button", name="Print")).to_be_visible()  # shown by the script
    screenshot("picklist-desktop")

    page.emulate_media(media="print")
    expect(page.locator(".topbar")).to_be_hidden()
    expect(page.locator(".picklist-form")).to_be_hidden()
    expect(page.locator(".picklist-machine th.print-only").first).to_be_visible()
    screenshot("picklist-print")
    page.emulate_media(media="screen")

    page.set_viewport_size(PHONE)
    expect(page.locator(".picklist-table thead").first).to_be_hidden()  # cards, not columns
    expect(page.locator(".picklist-machine").first).to_be_visible()
    assert_no_sideways_scroll(page)
    screenshot("picklist-390")

    # Choosing a location shows its list at once, without the route.
    page.get_by_label("or location").select_option(label="Harbour")
    page.wait_for_url(f"{server_url}/picklist/?route=&location={fleet.harbour.pk}*")
    expect(page.get_by_role("heading", name="Location Harbour")).to_be_visible()
    expect(page.locator(".picklist-machine")).to_have_count(1)
    assert_no_sideways_scroll(page)


def test_a_driver_records_a_fill_on_a_phone(server_url, driver, fleet, page, screenshot):
    page.set_viewport_size(PHONE)
    log_in(page, server_url, driver.username, STAFF_PASSWORD, next_path="/picklist/")
    expect(page.get_by_role("heading", name="Route North")).to_be_visible()
    page.locator(f'a[href="/machines/{HARBOUR}/fill"]').click()
    page.wait_for_url(f"{server_url}/machines/{HARBOUR}/fill")

    cola = page.get_by_label("Loaded into slot 1")
    expect(cola).to_have_value("7")  # the pick list's units to load
    assert_no_sideways_scroll(page)
    cola.fill("5")
    page.get_by_role("button", name="Record fill").click()

    expect(page.get_by_role("status")).to_have_text("Recorded 5 units loaded into 1 slot.")
    assert page.url == f"{server_url}/machines/{HARBOUR}/fill"  # redirected after the POST
    expect(page.locator(".fill-slot").first).to_contain_text("8 / 10 in slot")
    expect(cola).to_have_value("2")  # what is left to load
    assert_no_sideways_scroll(page)
    screenshot("fill-390")
    movement = StockMovement.objects.filter(reason=MovementReason.RESTOCK, user=driver).get()
    assert (movement.slot.number, movement.delta, movement.user) == (1, 5, driver)


def test_a_refused_fill_on_a_desktop_shows_the_slot_and_writes_nothing(
    server_url, driver, fleet, page, screenshot
):
    page.set_viewport_size(DESKTOP)
    log_in(page, server_url, driver.username, STAFF_PASSWORD, next_path=f"/machines/{HARBOUR}/fill")

    page.get_by_label("Loaded into slot 2").fill("3")  # it holds 8 of 10
    page.get_by_role("button", name="Record fill").click()

    expect(page.get_by_role("alert")).to_contain_text("Nothing was restocked.")
    error = page.locator(".fill-slot.has-error")
    expect(error).to_have_count(1)
    expect(error).to_contain_text("Slot 2 holds 8 of 10: adding 3 would pass its capacity")
    screenshot("fill-desktop")
    assert not StockMovement.objects.filter(user=driver).exists()
    assert list(
        Slot.objects.filter(device__device_id=HARBOUR).order_by("number").values_list("quantity")
    ) == [(3,), (8,), (0,), (0,)]
