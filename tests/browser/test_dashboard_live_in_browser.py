"""The dashboard's live behaviour in real Chromium: the read-only view, a dropped socket,
settling unconfirmed vends, process heartbeats, and a longer session under demo traffic."""

import socket
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.choices import Direction, Transport
from devices.models import CommunicationLog, Device
from devices.services import log_exchange
from devices.simulators.wifi_firmware import WifiFirmware
from inventory.demo import DEMO_DEVICE_ID, load_demo_data, load_demo_fleet
from tests.browser.conftest import STAFF_PASSWORD, log_in
from tests.scratch.children import drained, read_until, start_command, stop
from tests.scratch.net import wait_for
from transactions.choices import TransactionState
from transactions.lifecycle import transition
from transactions.models import Transaction
from transactions.services import request_vend, resolve_unconfirmed
from vending_site.dashboard.views import FEED_LIMIT

LIVE = '#connection[data-state="live"]'
WIFI_MACHINE = "ESP32_020000000001"
ACT_CONTROLS = ".slot__vend, .machine__activate, .port__actions button, .txn__resolve button"

# Records every socket the page opens, and can make the page deaf to what arrives: frames
# dropped on the floor, as when a connection dies without the page noticing at once.
SOCKET_SPY = """
(() => {
  const Real = window.WebSocket;
  window.__sockets = [];
  window.__deaf = false;
  class Spy extends Real {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
    addEventListener(type, listener, options) {
      if (type !== "message") return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (event) => {
        if (!window.__deaf) listener.call(this, event);
      }, options);
    }
  }
  window.WebSocket = Spy;
})();
"""


def online_demo_machine() -> Device:
    load_demo_data()
    Device.objects.filter(device_id=DEMO_DEVICE_ID).update(last_seen=timezone.now())
    return Device.objects.get(device_id=DEMO_DEVICE_ID)


def unconfirmed_vend(device: Device, user) -> Transaction:
    txn = request_vend(device=device, slot_number=1, user=user)
    transition(txn, TransactionState.SENT)
    return transition(txn, TransactionState.UNCONFIRMED)


def log_line(message: str) -> None:
    log_exchange(
        direction=Direction.IN,
        transport=Transport.SERIAL,
        device_key=DEMO_DEVICE_ID,
        message=message,
    )


def handshake_status(base_url: str, path: str, cookie: str = "") -> int:
    """The HTTP status a WebSocket handshake on ``path`` gets (101 when accepted)."""
    where = urlsplit(base_url)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {where.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"Origin: {base_url}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = conn.makefile("rb").readline().decode()
    return int(status_line.split()[1])


# --- (a) Who may watch and act ----------------------------------------------------------------


def test_a_public_dashboard_shows_anonymous_visitors_live_data_and_no_controls(
    public_live_server_url, page, screenshot, staff_user
):
    device = online_demo_machine()
    txn = unconfirmed_vend(device, staff_user)

    page.goto(f"{public_live_server_url}/")
    expect(page.locator(LIVE)).to_be_visible()
    expect(page.locator("#machines")).to_contain_text(DEMO_DEVICE_ID)
    expect(page.locator(f'#transactions li[data-transaction="{txn.pk}"]')).to_contain_text(
        "Unconfirmed"
    )
    log_line("seen by an anonymous visitor")
    expect(page.locator("#logs")).to_contain_text("seen by an anonymous visitor")

    expect(page.locator(".banner")).to_contain_text("Read-only view")
    assert page.locator(ACT_CONTROLS).count() == 0
    forged = page.request.post(
        f"{public_live_server_url}/dashboard/api/transactions/resolve",
        data={"transaction_id": str(txn.pk), "dispensed": True},
    )
    assert forged.status == 403
    assert forged.json()["detail"]
    vend = page.request.post(
        f"{public_live_server_url}/dashboard/api/vend",
        data={"device_id": DEMO_DEVICE_ID, "slot": 1},
    )
    assert vend.status == 403
    txn.refresh_from_db()
    assert txn.state == TransactionState.UNCONFIRMED
    screenshot("dashboard-public-read-only")


def test_a_private_dashboard_sends_visitors_to_log_in_and_refuses_their_socket(
    live_server_url, page, staff_user
):
    page.goto(f"{live_server_url}/")

    page.wait_for_url(f"{live_server_url}/admin/login/?next=/")
    assert handshake_status(live_server_url, "/ws/events/") == 403

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    session = next(c for c in page.context.cookies() if c["name"] == "sessionid")
    staff_cookie = f"sessionid={session['value']}"
    assert handshake_status(live_server_url, "/ws/events/", staff_cookie) == 101


# --- (b) A dropped socket ---------------------------------------------------------------------


def test_events_raised_while_the_socket_is_down_appear_once_after_it_reconnects(
    live_server_url, staff_user, page, screenshot
):
    device = online_demo_machine()
    page.add_init_script(SOCKET_SPY)
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator(LIVE)).to_be_visible()

    # From here on nothing the socket brings reaches the page, and then the socket closes.
    page.evaluate("window.__deaf = true")
    missed = [f"raised while away {n}" for n in range(3)]
    for message in missed:
        log_line(message)
    txn = request_vend(device=device, slot_number=2, user=staff_user)
    page.evaluate(
        """() => new Promise((resolve) => {
            const socket = window.__sockets[window.__sockets.length - 1];
            socket.addEventListener("close", () => { window.__deaf = false; resolve(); });
            socket.close();
        })"""
    )

    expect(page.locator(LIVE)).to_be_visible()
    assert page.evaluate("window.__sockets.length") == 2
    for message in missed:
        expect(page.locator("#logs li", has_text=message)).to_have_count(1)
    expect(page.locator(f'#transactions li[data-transaction="{txn.pk}"]')).to_have_count(1)
    # Something later arrives live; by then any second copy of the missed ones would have too.
    log_line("after the reconnect")
    expect(page.locator("#logs li", has_text="after the reconnect")).to_have_count(1)
    for message in missed:
        expect(page.locator("#logs li", has_text=message)).to_have_count(1)
    expect(page.locator(f'#transactions li[data-transaction="{txn.pk}"]')).to_have_count(1)
    screenshot("dashboard-after-reconnect")


# --- (c) Settling an unconfirmed vend --------------------------------------------------------


@pytest.mark.allow_console_errors  # the 409 is logged by Chromium as a failed resource load
def test_staff_settle_an_unconfirmed_vend_and_every_open_page_sees_it(
    live_server_url, staff_user, page, screenshot, console_errors
):
    device = online_demo_machine()
    first = unconfirmed_vend(device, staff_user)
    second = unconfirmed_vend(device, staff_user)
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    other = page.context.new_page()
    other.goto(f"{live_server_url}/")
    for each in (page, other):
        expect(each.locator(LIVE)).to_be_visible()
    row = page.locator(f'#transactions li[data-transaction="{first.pk}"]')

    row.get_by_role("button", name="Not dispensed").click()

    expect(row).to_contain_text("Failed")
    expect(row.locator(".txn__resolve")).to_have_count(0)
    expect(other.locator(f'#transactions li[data-transaction="{first.pk}"]')).to_contain_text(
        "Failed"
    )
    first.refresh_from_db()
    assert first.state == TransactionState.FAILED

    # Someone else settles the second one while this page's feed is paused (stale buttons).
    page.get_by_role("button", name="Pause").click()
    resolve_unconfirmed(txn=second, dispensed=True, user=staff_user)
    stale = page.locator(f'#transactions li[data-transaction="{second.pk}"]')
    stale.get_by_role("button", name="Not dispensed").click()

    expect(page.locator("#feeds-notice")).to_contain_text("only unconfirmed vends are resolved")
    second.refresh_from_db()
    assert second.state == TransactionState.SUCCEEDED
    page.get_by_role("button", name="Resume").click()
    expect(stale).to_contain_text("Succeeded")
    screenshot("dashboard-settled-vends")
    other.close()
    assert all("409" in entry for entry in console_errors), console_errors


# --- (d) Heartbeats --------------------------------------------------------------------------


def test_a_running_discovery_listener_shows_running_then_stopped(
    live_server_url, staff_user, page, screenshot
):
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    discovery = page.locator('.service[data-service="discovery"]')
    expect(discovery).to_have_attribute("data-state", "never_started")

    process = start_command("run_discovery", "--host", "127.0.0.1", "--port", "0")
    try:
        read_until(process, "discovery listening")
        expect(discovery).to_have_attribute("data-state", "running")
        expect(discovery).to_contain_text(f"pid {process.pid}")
        screenshot("dashboard-discovery-running")
    finally:
        code, output = stop(process)
    assert code == 0, output

    expect(discovery).to_have_attribute("data-state", "stopped")
    expect(page.locator('.service[data-service="sweeper"]')).to_contain_text("Never started")


# --- (e) A longer session ---------------------------------------------------------------------


def test_demo_traffic_past_both_feed_limits_leaves_the_feeds_capped_and_the_console_clean(
    live_server_url, staff_user, page, screenshot
):
    load_demo_data()
    load_demo_fleet()
    machine = WifiFirmware(
        index=1, server_url=live_server_url, poll_interval=0.3, vend_seconds=0.1, after_confirm=0.1
    )
    stop_machine = machine.start()
    try:
        wait_for(
            lambda: Device.objects.get(device_id=WIFI_MACHINE).is_online,
            what="the simulated machine online",
        )
        log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
        expect(page.locator(LIVE)).to_be_visible()

        # The customers buy until both feeds have had more than they show (about 10 s at
        # this rate), then are stopped with SIGTERM, as `make demo` stops them.
        customers = start_command("demo_traffic", "--every", "0.15")
        try:
            # Starting Django can take a while on a loaded CI machine: the wait for the
            # traffic counts from the greeting.
            read_until(customers, "demo customers: a vend every", timeout=60)
            drained(customers)  # read on while the test waits: a full pipe would stall it
            wait_for(
                lambda: (
                    Transaction.objects.count() > FEED_LIMIT
                    and CommunicationLog.objects.count() > FEED_LIMIT
                ),
                timeout=60,
                what=f"more than {FEED_LIMIT} vends and log lines of demo traffic",
            )
        finally:
            code, output = stop(customers)
        assert code == 0, output
        assert "demo customers gone" in output, output
    finally:
        stop_machine.set()
        machine.thread.join(10)

    assert Transaction.objects.count() > FEED_LIMIT  # enough traffic to need the cap
    newest = Transaction.objects.order_by("-created_at").first()
    expect(page.locator("#transactions li").first).to_have_attribute(
        "data-transaction", str(newest.pk)
    )
    assert page.locator("#transactions li").count() <= FEED_LIMIT
    assert page.locator("#logs li").count() <= FEED_LIMIT
    expect(page.locator(LIVE)).to_be_visible()
    screenshot("dashboard-after-demo-traffic")


# --- Filtering by machine on the server ------------------------------------------------------


def test_choosing_a_quiet_machine_finds_its_log_lines_behind_a_busy_ones(
    live_server_url, staff_user, page
):
    load_demo_data()
    load_demo_fleet()
    start = timezone.now() - timedelta(minutes=10)
    quiet = CommunicationLog(
        direction=Direction.IN,
        transport=Transport.WIFI,
        device_key=WIFI_MACHINE,
        message="the quiet machine spoke",
        created_at=start,
    )
    busy = [
        CommunicationLog(
            direction=Direction.IN,
            transport=Transport.SERIAL,
            device_key=DEMO_DEVICE_ID,
            message=f"busy line {n}",
            created_at=start + timedelta(seconds=n + 1),
        )
        for n in range(FEED_LIMIT + 10)
    ]
    CommunicationLog.objects.bulk_create([quiet, *busy])
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator("#logs li")).to_have_count(FEED_LIMIT)
    expect(page.locator("#logs")).not_to_contain_text("the quiet machine spoke")

    page.get_by_label("Machine", exact=True).select_option(WIFI_MACHINE)

    expect(page.locator("#logs li")).to_have_count(1)
    expect(page.locator("#logs")).to_contain_text("the quiet machine spoke")
    page.get_by_label("Machine", exact=True).select_option("")
    expect(page.locator("#logs li").first).to_contain_text(f"busy line {FEED_LIMIT + 9}")
