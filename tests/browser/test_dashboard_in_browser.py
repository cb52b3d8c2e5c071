"""The operator dashboard in real headless Chromium, against the real server and machines."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.models import Device
from devices.simulators.wifi_firmware import WifiFirmware
from inventory.demo import load_demo_data, load_demo_fleet
from tests.browser.conftest import STAFF_PASSWORD, log_in
from tests.scratch.children import start_command, stop
from tests.scratch.net import wait_for

WIFI_MACHINE = "ESP32_020000000001"


@pytest.fixture
def simulated_wifi_machine(live_server_url):
    """Firmware v2.1 behaviour, quick timings, against the server under test."""
    machine = WifiFirmware(
        index=1,
        server_url=live_server_url,
        poll_interval=0.3,
        vend_seconds=0.3,
        after_confirm=0.2,
    )
    stop_machine = machine.start()
    yield machine
    stop_machine.set()
    machine.thread.join(10)


def test_staff_press_vend_and_watch_it_succeed_without_a_reload(
    live_server_url, staff_user, page, screenshot, simulated_wifi_machine
):
    load_demo_data()
    load_demo_fleet()
    wait_for(
        lambda: Device.objects.get(device_id=WIFI_MACHINE).is_online, what="the machine online"
    )

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.get_by_text("ESP32_DEMO").first).to_be_visible()
    page.goto(f"{live_server_url}/?device={WIFI_MACHINE}")
    expect(page.locator('#connection[data-state="live"]')).to_be_visible(timeout=10_000)
    first_slot = page.locator(".slot").first
    expect(first_slot.locator(".slot__qty")).to_contain_text("8 of 10")
    url_before = page.url

    first_slot.locator(".slot__vend").click()

    expect(first_slot.locator(".slot__status")).to_contain_text(
        re.compile("succeeded", re.IGNORECASE), timeout=15_000
    )
    expect(first_slot.locator(".slot__qty")).to_contain_text("7 of 10")
    assert page.url == url_before  # no navigation happened
    assert len(simulated_wifi_machine.commands()) == 1
    screenshot("dashboard-after-vend")


def test_an_event_from_another_process_appears_on_the_open_page(
    live_server_url, staff_user, page, screenshot
):
    load_demo_data()
    Device.objects.filter(device_id="ESP32_DEMO").update(last_seen=timezone.now())
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator('#connection[data-state="live"]')).to_be_visible(timeout=10_000)

    process = start_command(
        "shell",
        "-c",
        "from devices.services import log_exchange; "
        "log_exchange(direction='in', transport='serial', device_key='ESP32_DEMO', "
        "message='hello from another process')",
        DJANGO_ALLOW_ASYNC_UNSAFE="",
    )
    process.wait(30)
    assert stop(process)[0] == 0

    expect(page.locator("#logs")).to_contain_text("hello from another process", timeout=3_000)
    screenshot("dashboard-live-log")


def test_the_dashboard_fits_a_phone_screen(live_server_url, staff_user, page, screenshot):
    load_demo_data()
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")

    expect(page.locator(".slot").first).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px wide)"
    screenshot("dashboard-phone")


def test_a_new_machine_shows_awaiting_approval_and_staff_approve_it_from_the_page(
    live_server_url, staff_user, page, screenshot
):
    """With default settings a machine that announces itself waits for staff; the page
    shows it live and its Approve button admits it (bound to its address, slots created)."""
    load_demo_data()
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator('#connection[data-state="live"]')).to_be_visible(timeout=10_000)
    newcomer = WifiFirmware(index=9, server_url=live_server_url, poll_interval=0.3, max_polls=40)
    stop_newcomer = newcomer.start()
    try:
        wait_for(
            lambda: Device.objects.filter(device_id=newcomer.device_id).exists(),
            what="the new machine registered",
        )
        machine = page.locator(".machine", has_text=newcomer.device_id)
        expect(machine.locator(".badge--admission")).to_have_text(
            "awaiting approval", timeout=10_000
        )
        screenshot("dashboard-machine-awaiting-approval")

        machine.locator(".machine__approve").click()

        expect(machine.locator(".badge--admission")).to_be_hidden()
        expect(machine.locator(".machine__approve")).to_be_hidden()
    finally:
        stop_newcomer.set()
        newcomer.thread.join(10)
    device = Device.objects.get(device_id=newcomer.device_id)
    assert device.approved and device.bound_address == "127.0.0.1"
    assert device.slots.count() == 5
