"""Defects of the new-operator trial on the dashboard, in real headless Chromium: which
machine the page opens on, one machine shown and vended on, and the serial ports table's width.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.models import Device, SerialPort
from inventory.demo import DEMO_DEVICE_ID, load_demo_data, load_demo_fleet
from tests.browser.conftest import STAFF_PASSWORD, log_in
from transactions.models import Transaction

FIRST, SECOND = "ESP32_020000000001", "ESP32_020000000002"
LIVE = '#connection[data-state="live"]'
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}


def keep_online(*device_ids: str) -> None:
    """Seen an hour from now: online for the whole test without a simulator polling."""
    Device.objects.filter(device_id__in=device_ids).update(
        last_seen=timezone.now() + timedelta(hours=1)
    )


def machine_card(page, device_id: str):
    return page.locator(".machine", has_text=device_id)


def test_the_page_opens_on_an_online_machine_when_the_default_one_is_offline(
    live_server_url, staff_user, page, screenshot
):
    load_demo_data()  # ESP32_DEMO: the default (active) machine, never seen
    load_demo_fleet()
    keep_online(SECOND)
    assert Device.objects.get(is_active=True).device_id == DEMO_DEVICE_ID

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")

    expect(page.locator("#slots-machine")).to_contain_text(SECOND)
    expect(page.locator("#slots-target")).to_have_attribute("data-online", "true")
    expect(page.locator(".slot__vend").first).to_be_enabled()
    expect(machine_card(page, DEMO_DEVICE_ID).locator(".badge--active")).to_have_text("Default")
    screenshot("dashboard-opens-on-online-machine")

    machine_card(page, DEMO_DEVICE_ID).locator(".machine__show").click()

    target = page.locator("#slots-target")
    expect(target).to_have_attribute("data-online", "false")
    expect(target).to_contain_text("Offline (never seen)")
    expect(target).to_contain_text("1 other machine(s) online")
    expect(page.locator(".slot__vend").first).to_be_disabled()
    screenshot("dashboard-offline-machine-shown")


def test_the_machine_shown_is_the_one_vended_on_and_the_default_is_a_separate_choice(
    live_server_url, staff_user, page, screenshot
):
    first = load_demo_fleet()[0]
    keep_online(FIRST, SECOND)
    Device.objects.filter(pk=first.pk).update(is_active=True)

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator(LIVE)).to_be_visible(timeout=10_000)
    expect(page.locator("#slots-machine")).to_contain_text(FIRST)
    expect(machine_card(page, FIRST).locator(".machine__shown")).to_be_visible()

    machine_card(page, SECOND).locator(".machine__show").click()

    expect(page.locator("#slots-machine")).to_contain_text(SECOND)
    expect(machine_card(page, SECOND).locator(".machine__shown")).to_be_visible()
    expect(machine_card(page, FIRST).locator(".machine__shown")).to_be_hidden()
    # The default stays where it was, labelled as what it is.
    expect(machine_card(page, FIRST).locator(".badge--active")).to_have_text("Default")
    expect(machine_card(page, SECOND).locator(".machine__activate")).to_have_text("Make default")
    vend = page.locator(".slot").first.locator(".slot__vend")
    expect(vend).to_have_text("Vend on Demo WiFi machine 2")
    expect(page.locator("#slots-target")).to_contain_text(f"vend on Demo WiFi machine 2 ({SECOND})")
    screenshot("dashboard-machine-shown-is-vend-target")

    vend.click()

    expect(page.locator(".slot").first.locator(".slot__status")).to_contain_text("Queued")
    txn = Transaction.objects.get()
    assert (txn.device.device_id, txn.slot_number) == (SECOND, 1)
    assert Device.objects.get(is_active=True).device_id == FIRST

    machine_card(page, SECOND).locator(".machine__activate").click()

    expect(machine_card(page, SECOND).locator(".badge--active")).to_be_visible()
    expect(machine_card(page, FIRST).locator(".badge--active")).to_be_hidden()
    assert Device.objects.get(is_active=True).device_id == SECOND


def add_ports() -> None:
    device = Device.objects.get(device_id="ESP32_USB_DEMO01")
    SerialPort.objects.create(
        path="/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_0001-if00-port0",
        vid=0x10C4,
        pid=0xEA60,
        description="CP2102N USB to UART Bridge Controller",
        likely_esp32=True,
        is_open=True,
        device=device,
        last_error="",
    )
    SerialPort.objects.create(
        path="/dev/ttyUSB1",
        description="USB-Serial Controller",
        present=False,
        last_error="[Errno 2] could not open port /dev/ttyUSB1: No such file or directory",
    )


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["390px", "1440px"])
def test_the_serial_ports_table_fits_and_shows_every_button(
    live_server_url, staff_user, page, screenshot, viewport
):
    load_demo_fleet()
    add_ports()
    page.set_viewport_size(viewport)

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    buttons = page.locator("#ports button")
    expect(buttons).to_have_count(6)  # Connect, Disconnect, Auto for each port

    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], f"the page scrolls sideways ({width}px wide)"
    wrap = page.evaluate(
        "(() => { const w = document.querySelector('#ports-table').parentElement;"
        " return [w.scrollWidth, w.clientWidth]; })()"
    )
    assert wrap[0] <= wrap[1], f"the ports table is cut: {wrap[0]}px in {wrap[1]}px"
    panel = page.locator(".panel--connections").bounding_box()
    for index in range(6):
        box = buttons.nth(index).bounding_box()
        assert panel["x"] <= box["x"] and box["x"] + box["width"] <= panel["x"] + panel["width"], (
            f"button {index} sticks out of the Connections panel"
        )
    page.locator(".panel--connections").scroll_into_view_if_needed()
    screenshot(f"dashboard-serial-ports-{viewport['width']}px")
