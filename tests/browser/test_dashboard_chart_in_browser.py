"""The dashboard's vends-per-hour chart in real headless Chromium: its axis counts whole vends."""

from django.utils import timezone
from playwright.sync_api import expect

from devices.models import Device
from inventory.demo import load_demo_data
from tests.browser.conftest import STAFF_PASSWORD, log_in
from transactions.choices import TransactionState
from vending_site.tests.test_dashboard import make_transaction


def test_the_vends_axis_is_labelled_in_whole_vends(live_server_url, staff_user, page, screenshot):
    """21 vends in the busiest hour once gave an axis of 0 / 6.3 / 12.5 / 18.8 / 25."""
    load_demo_data()
    device = Device.objects.get(device_id="ESP32_DEMO")
    now = timezone.now()
    for _ in range(21):
        make_transaction(device, state=TransactionState.SUCCEEDED, created_at=now)

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator("#vends-summary")).to_contain_text("21 succeeded, 0 failed")
    labels = page.locator('#vends-chart svg > text[text-anchor="end"]').all_text_contents()

    assert labels == ["0", "5", "10", "15", "20", "25"]
    screenshot("dashboard-vends-axis")
