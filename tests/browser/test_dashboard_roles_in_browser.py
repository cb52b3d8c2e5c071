"""The dashboard for each staff role in headless Chromium: it loads and stays live, offers only
the buttons the role may use, says why the others are missing, and a Technician's own vend
still shows its progress although the Technician sees no one else's transactions."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.models import Device, Location, Route, RouteStop
from devices.simulators.wifi_firmware import WifiFirmware
from inventory.demo import load_demo_data, load_demo_fleet
from tests.browser.conftest import STAFF_PASSWORD, log_in, with_server_password
from tests.scratch.net import wait_for
from vending_site.auth import roles

WIFI_MACHINE = "ESP32_020000000001"


@pytest.fixture
def person(transactional_db):
    """``person(role)``: a staff account holding ``role``, password ``STAFF_PASSWORD``,
    hashed as the server checks it."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    def make(role: str):
        user = with_server_password(
            get_user_model().objects.create_user(role.lower(), is_staff=True)
        )
        user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def simulated_wifi_machine(live_server_url):
    machine = WifiFirmware(
        index=1, server_url=live_server_url, poll_interval=0.3, vend_seconds=0.3, after_confirm=0.2
    )
    stop_machine = machine.start()
    yield machine
    stop_machine.set()
    machine.thread.join(10)


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_a_technician_vends_and_watches_their_own_vend_but_sees_no_money(
    live_server_url, person, page, screenshot, simulated_wifi_machine, width
):
    load_demo_data()
    load_demo_fleet()
    wait_for(lambda: Device.objects.get(device_id=WIFI_MACHINE).is_online, what="online")
    technician = person(roles.TECHNICIAN)
    page.set_viewport_size({"width": width, "height": 900})

    log_in(page, live_server_url, technician.username, STAFF_PASSWORD, next_path="/")
    page.goto(f"{live_server_url}/?device={WIFI_MACHINE}")
    expect(page.locator('#connection[data-state="live"]')).to_be_visible(timeout=10_000)
    expect(page.locator("#role-note")).to_contain_text("settling unconfirmed vends")
    first_slot = page.locator(".slot").first
    expect(first_slot.locator(".slot__price")).to_have_text("")  # no money

    first_slot.locator(".slot__vend").click()

    expect(first_slot.locator(".slot__status")).to_contain_text(
        re.compile("succeeded", re.IGNORECASE), timeout=15_000
    )
    # Their own vend is in the feed; the demo's history of other people's is not.
    expect(page.locator("#transactions .feed__item")).to_have_count(1)
    screenshot(f"dashboard-technician-{width}")


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_a_viewer_watches_read_only_with_the_reason_shown(
    live_server_url, person, page, screenshot, width
):
    load_demo_data()
    Device.objects.update(last_seen=timezone.now())
    viewer = person(roles.VIEWER)
    page.set_viewport_size({"width": width, "height": 900})

    log_in(page, live_server_url, viewer.username, STAFF_PASSWORD, next_path="/")

    expect(page.locator('#connection[data-state="live"]')).to_be_visible(timeout=10_000)
    expect(page.locator(".slot").first).to_be_visible()
    assert page.locator(".slot__vend, .machine__activate, .machine__approve").count() == 0
    expect(page.locator("#role-note")).to_contain_text("Read-only view")
    expect(page.locator("#role-note")).to_contain_text("devices.operate_device")
    expect(page.locator(".slot__price").first).to_contain_text("Price")
    screenshot(f"dashboard-viewer-{width}")


def test_a_driver_sees_only_the_machines_of_their_route(live_server_url, person, page, screenshot):
    load_demo_data()
    load_demo_fleet()
    driver = person(roles.DRIVER)
    stop = Location.objects.create(name="Station")
    Device.objects.filter(device_id=WIFI_MACHINE).update(location=stop, last_seen=timezone.now())
    RouteStop.objects.create(
        route=Route.objects.create(name="Morning", driver=driver), location=stop, position=1
    )

    log_in(page, live_server_url, driver.username, STAFF_PASSWORD, next_path="/")

    expect(page.locator('#connection[data-state="live"]')).to_be_visible(timeout=10_000)
    expect(page.locator(".machine")).to_have_count(1)
    expect(page.locator(".machine").first).to_contain_text(WIFI_MACHINE)
    expect(page.locator("#logs-empty")).to_contain_text("devices.view_communicationlog")
    assert page.locator(".slot__vend").count() == 0
    screenshot("dashboard-driver")
