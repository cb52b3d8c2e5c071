"""The Sales (/sales/) and Fleet stock (/stock/) pages in real headless Chromium, at desktop
width and at 390 px (a phone): they render, report no console error, never scroll sideways,
and their few scripted niceties work. Screenshots: sales-desktop.png, sales-390.png,
stock-desktop.png, stock-390.png under test-artifacts/screenshots/."""

import random
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from devices.models import Device, Location, Route, RouteStop
from inventory.models import Product, Slot
from tests.browser.conftest import STAFF_PASSWORD, log_in
from transactions.choices import TransactionState as S
from transactions.models import Transaction

PHONE = {"width": 390, "height": 844}
PRODUCTS = [
    ("COLA", "Cola 0.5 l", "1.80"),
    ("WATER", "Still water", "1.20"),
    ("CHIPS", "Salted chips", "1.50"),
    ("BAR", "Chocolate bar", "1.30"),
    ("NUTS", "Mixed nuts", "2.10"),
    ("GUM", "Mint gum", "0.90"),
]


def build_fleet(today) -> None:
    """Four machines at two locations on one route, a month of vends with a weak slot (the
    Station's slot 4), and stock from full to empty."""
    rng = random.Random(16)
    products = [Product.objects.create(sku=s, name=n, price=Decimal(p)) for s, n, p in PRODUCTS]
    office = Location.objects.create(name="Harbour Office", address="Quay 3")
    station = Location.objects.create(name="Central Station", address="Platform 1")
    route = Route.objects.create(name="Monday north")
    RouteStop.objects.create(route=route, location=office, position=1)
    RouteStop.objects.create(route=route, location=station, position=2)
    now = timezone.now()
    machines = [
        ("ESP32_0A0000000001", "Office lobby", office, now, [10, 7, 2, 0, 9, 6]),
        ("ESP32_0A0000000002", "Office canteen", office, now, [10, 10, 9, 8, 10, 10]),
        ("ESP32_0A0000000003", "Station hall", station, None, [3, 0, 1, 4, 0, 5]),
        ("ESP32_0A0000000004", "", station, now, [6, 5, 1, 6, 4, 7]),
    ]
    slots = []
    for device_id, name, location, seen, stock in machines:
        device = Device.objects.create(
            device_id=device_id, name=name, location=location, slot_count=6, last_seen=seen
        )
        for number, (product, quantity) in enumerate(zip(products, stock, strict=True), 1):
            slots.append(
                Slot.objects.create(
                    device=device, number=number, product=product, quantity=quantity, capacity=10
                )
            )
    vends = []
    zone = timezone.get_current_timezone()
    for back in range(60):
        day = today - timedelta(days=back)
        for slot in slots:
            weak = slot.device.device_id.endswith("3") and slot.number == 4
            for _ in range(rng.randint(0, 3 if back < 30 else 2)):
                failed = rng.random() < (0.45 if weak else 0.04)
                when = datetime.combine(day, time(rng.randint(7, 20), rng.randint(0, 59)), zone)
                vends.append(
                    Transaction(
                        device=slot.device,
                        slot=slot,
                        slot_number=slot.number,
                        product=slot.product,
                        product_name=slot.product.name,
                        product_sku=slot.product.sku,
                        price=slot.product.price,
                        state=S.FAILED if failed else S.SUCCEEDED,
                        created_at=min(when, now),
                    )
                )
    Transaction.objects.bulk_create(vends)


@pytest.fixture
def fleet(transactional_db):
    build_fleet(timezone.localdate())


def assert_no_sideways_scroll(page: Page) -> None:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths[0]} > {widths[1]} px"


def test_sales_page_at_desktop_width(live_server_url, staff_user, fleet, page, screenshot):
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    page.get_by_role("link", name="Sales").first.click()
    page.wait_for_url(f"{live_server_url}/sales/")

    expect(page.locator("#totals .total")).to_have_count(4)
    expect(page.locator("#revenue-chart .revchart__bar")).to_have_count(7)
    expect(page.locator("#top-products li")).to_have_count(6)
    expect(page.locator("#machine-sales tbody tr")).to_have_count(4)
    weak = page.locator("#weak-slots .weak-slot")
    expect(weak.first).to_contain_text("ESP32_0A0000000003")
    expect(weak.first).to_contain_text("#4")
    expect(page.locator("#csv-links a")).to_have_count(4)

    page.get_by_role("link", name="30 days").click()
    page.wait_for_url(f"{live_server_url}/sales/?period=30d")
    expect(page.locator("#revenue-chart .revchart__bar")).to_have_count(30)
    readout = page.locator("#chart-readout")
    expect(readout).to_contain_text("Best day")
    page.locator("#revenue-chart .revchart__slot").nth(29).hover()
    expect(readout).to_contain_text(timezone.localdate().strftime("%a"))
    expect(readout).to_contain_text("EUR")
    page.mouse.move(5, 5)
    expect(readout).to_contain_text("Best day")
    assert_no_sideways_scroll(page)
    screenshot("sales-desktop")

    with page.expect_download() as download:
        page.locator("#csv-links a").first.click()
    header = open(download.value.path(), encoding="utf-8").readline().strip()
    assert header.startswith("machine,machine_name,vends,revenue")


def test_sales_page_at_390_px(live_server_url, staff_user, fleet, page, screenshot):
    page.set_viewport_size(PHONE)
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/sales/")

    first = (timezone.localdate() - timedelta(days=13)).isoformat()
    page.get_by_label("From", exact=True).fill(first)
    page.get_by_label("To", exact=True).fill(timezone.localdate().isoformat())
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"{live_server_url}/sales/?from={first}**")
    expect(page.locator("#revenue-chart .revchart__bar")).to_have_count(14)
    expect(page.locator("#machine-sales")).to_be_visible()
    assert_no_sideways_scroll(page)
    screenshot("sales-390")


def test_stock_page_at_desktop_width(live_server_url, staff_user, fleet, page, screenshot):
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/stock/")

    cards = page.locator("#stock-list .stock-card")
    expect(cards).to_have_count(4)
    # The Station hall has two empty slots: first; the canteen, nearly full, last.
    expect(cards.first).to_contain_text("Station hall")
    expect(cards.first).to_contain_text("2 empty")
    expect(cards.last).to_contain_text("Office canteen")
    expect(cards.first.get_by_role("link", name="Record a fill")).to_have_attribute(
        "href", "/machines/ESP32_0A0000000003/fill"
    )
    assert_no_sideways_scroll(page)
    screenshot("stock-desktop")

    # Choosing a location filters at once (the script submits the form).
    expect(page.get_by_role("button", name="Show")).to_be_hidden()
    page.get_by_label("Location").select_option(label="Harbour Office")
    page.wait_for_url("**/stock/?location=*")
    expect(cards).to_have_count(2)
    expect(page.locator("#stock-summary")).to_contain_text("2 machines: 1 with an empty slot")


def test_stock_page_at_390_px(live_server_url, staff_user, fleet, page, screenshot):
    page.set_viewport_size(PHONE)
    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/stock/")

    expect(page.locator("#stock-list .stock-card")).to_have_count(4)
    assert_no_sideways_scroll(page)
    screenshot("stock-390")
