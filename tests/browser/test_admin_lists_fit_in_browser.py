"""Every admin changelist fits a 1440 px screen: no sideways scrolling, no column cut off.

The trial found the transactions list cutting its "State" column and UUIDs wrapping over
four lines. The test fills every registered model with realistic rows (long names, long
log lines, real vends through the services), then opens each changelist in Chromium.
"""

from datetime import timedelta
from decimal import Decimal

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.models import Group
from django.utils import timezone
from playwright.sync_api import expect
from rest_framework_api_key.models import APIKey
from rest_framework_simplejwt.tokens import RefreshToken

from devices.choices import Direction, LogLevel, Transport
from devices.models import Device, SerialPort
from devices.services import log_exchange
from inventory.demo import load_demo_data, load_demo_fleet
from inventory.models import Product, Slot
from inventory.services import set_price
from tests.browser.conftest import STAFF_PASSWORD, log_in
from transactions.choices import TransactionState
from transactions.models import Transaction
from transactions.services import request_vend
from vending_site.notify.events import emit
from vending_site.notify.models import Delivery, Endpoint

WIDTH = 1440
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def fill_every_model(user) -> None:
    load_demo_data()
    fleet = load_demo_fleet()
    Device.objects.update(last_seen=timezone.now() + timedelta(hours=1), firmware_version="2.1.0")
    Device.objects.filter(pk=fleet[0].pk).update(
        name="Lobby machine by the north entrance, second floor"
    )
    product = Product.objects.create(
        name="Organic sparkling elderflower lemonade, glass bottle 0.33 l",
        sku="ELDERFLOWER-LEMONADE-033-GLASS",
        price=Decimal("2.40"),
    )
    Slot.objects.filter(device=fleet[0], number=5).update(product=product)
    set_price(product=product, price=Decimal("2.60"), user=user, note="supplier price rise")
    slot = Slot.objects.get(device=fleet[0], number=1)
    set_price(slot=slot, price=Decimal("1.10"), user=user, note="promotion in the lobby")
    for device in Device.objects.filter(pk__in=[d.pk for d in fleet[:2]]):
        for number in (1, 2, 3, 5):
            request_vend(device=device, slot_number=number, user=user)
    Transaction.objects.filter(pk=Transaction.objects.first().pk).update(
        state=TransactionState.FAILED,
        failure_reason="Motor did not turn: the machine reported a jam in slot 1 (sensor 3)",
    )
    for index in range(3):
        log_exchange(
            direction=Direction.IN,
            transport=Transport.WIFI,
            device=fleet[0],
            endpoint="/esp32/commands/ESP32_020000000001",
            level=LogLevel.WARNING,
            remote_addr="192.168.100.200",
            message=f"poll {index}: "
            + '{"command": "VEND", "command_id": 12345, "slot": 3, "transaction_id": '
            '"4b2f7a34-8a5e-4ad8-9e7e-2f6f3c3d9a11"} answered after a long wait',
        )
    SerialPort.objects.create(
        path="/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_0001",
        vid=0x10C4,
        pid=0xEA60,
        description="CP2102N USB to UART Bridge Controller",
        likely_esp32=True,
        is_open=True,
        device=fleet[2],
        last_error="[Errno 5] Input/output error while reading from the port",
    )
    APIKey.objects.create_key(name="Kiosk in the lobby, payment terminal 1")
    RefreshToken.for_user(user)
    Group.objects.get_or_create(name="Night shift operators")
    AccessAttempt.objects.create(
        user_agent=USER_AGENT,
        ip_address="192.168.100.200",
        username="somebody",
        path_info="/admin/login/",
        failures_since_start=3,
        get_data="",
        post_data="username=somebody",
        http_accept="text/html",
    )
    AccessLog.objects.create(
        user_agent=USER_AGENT, ip_address="192.168.100.200", username="operator", path_info="/"
    )
    AccessFailureLog.objects.create(
        user_agent=USER_AGENT,
        ip_address="192.168.100.200",
        username="somebody",
        path_info="/admin/login/",
    )
    Endpoint.objects.create(
        name="ERP of the regional distributor, production",
        url="https://erp.distributor.example.com/integrations/vending/webhooks/v2/events",
        event_types=["vend.succeeded", "vend.failed", "vend.unconfirmed", "stock.low"],
    )
    emit(
        "vend.failed",
        {"id": "4b2f7a34-8a5e-4ad8-9e7e-2f6f3c3d9a11", "state": "failed"},
        subject="vend:4b2f7a34-8a5e-4ad8-9e7e-2f6f3c3d9a11",
    )
    Delivery.objects.update(
        attempts=3,
        last_status=503,
        last_error="HTTP 503: upstream connect error or disconnect/reset before headers",
    )


def changelist_urls() -> list[str]:
    return sorted(
        f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for model in admin.site._registry
    )


def test_every_admin_changelist_fits_1440_px(live_server_url, staff_user, page, screenshot):
    fill_every_model(staff_user)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD)

    too_wide = []
    for path in changelist_urls():
        page.goto(f"{live_server_url}{path}")
        expect(page.locator("#changelist")).to_be_visible()
        page_width, table_width, room = page.evaluate(
            """() => {
              const results = document.querySelector("#changelist .results");
              const table = results && results.querySelector("table");
              return [
                document.documentElement.scrollWidth,
                table ? table.getBoundingClientRect().width : 0,
                results ? results.clientWidth : 0,
              ];
            }"""
        )
        if page_width > WIDTH or table_width > room + 1:
            too_wide.append(f"{path}: page {page_width}px, table {table_width:.0f}px in {room}px")
            screenshot(f"admin-too-wide-{path.strip('/').replace('/', '-')}", full_page=False)
    page.goto(f"{live_server_url}/admin/transactions/transaction/")
    screenshot("admin-transactions-1440px", full_page=False)
    assert not too_wide, "changelists wider than 1440 px:\n" + "\n".join(too_wide)
