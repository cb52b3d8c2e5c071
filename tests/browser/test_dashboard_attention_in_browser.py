""" "Needs attention" in real Chromium: alerts opened by the real rule evaluation, pinned above
the machines, settled and acknowledged from the page, and kept current live."""

from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from devices.models import Device
from inventory.demo import DEMO_DEVICE_ID, load_demo_data
from inventory.models import Slot
from tests.browser.conftest import STAFF_PASSWORD, log_in
from tests.factories import DeviceFactory
from transactions.choices import TransactionState
from transactions.lifecycle import transition
from transactions.models import Transaction
from transactions.services import request_vend
from vending_site.alerts import evaluation
from vending_site.alerts.models import Alert, AlertState

LIVE = '#connection[data-state="live"]'
ITEMS = "#attention-list .attention__item"


def test_needs_attention_settles_acknowledges_and_follows_alerts_live(
    page, live_server_url, staff_user, screenshot
):
    load_demo_data()
    Device.objects.filter(device_id=DEMO_DEVICE_ID).update(last_seen=timezone.now())
    machine = Device.objects.get(device_id=DEMO_DEVICE_ID)
    txn = request_vend(device=machine, slot_number=1, user=staff_user)
    transition(txn, TransactionState.SENT)
    transition(txn, TransactionState.UNCONFIRMED)
    DeviceFactory(device_id="ESP32_0000000000AA", last_seen=timezone.now() - timedelta(hours=1))
    evaluation._last_run.clear()
    evaluation.run_checks()

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD, next_path="/")
    expect(page.locator(LIVE)).to_be_visible()

    # Pinned above the machines, most severe first.
    attention = page.locator("#attention")
    machines = page.locator(".panel--machines")
    assert attention.bounding_box()["y"] < machines.bounding_box()["y"]
    items = page.locator(ITEMS)
    # The demo's slot 5 is empty and slot 4 low: those alerts too, warnings before info.
    expect(items).to_have_count(4)
    expect(items.nth(0)).to_contain_text("is unconfirmed")
    expect(items.nth(0).locator(".badge")).to_have_text("critical")
    expect(items.nth(3).locator(".badge")).to_have_text("info")
    expect(page.locator(ITEMS, has_text="ESP32_0000000000AA is offline")).to_have_count(1)
    expect(page.locator("#attention-count")).to_have_text("4 open")
    screenshot("dashboard-needs-attention")

    # Settling asks first, then settles through the same service as the admin.
    items.nth(0).get_by_role("button", name="Not dispensed").click()
    expect(items.nth(0)).to_contain_text("the unit goes back to the slot. Confirm?")
    assert Transaction.objects.get(pk=txn.pk).state == TransactionState.UNCONFIRMED
    items.nth(0).get_by_role("button", name="Confirm: not dispensed").click()
    expect(items.nth(0)).to_contain_text("Settled: not dispensed")
    assert Transaction.objects.get(pk=txn.pk).state == TransactionState.FAILED

    # The next check resolves the vend's alert: it leaves every open page.
    evaluation.run_checks()
    expect(items).to_have_count(3)
    expect(page.locator(ITEMS, has_text="is unconfirmed")).to_have_count(0)

    # Acknowledged: it stays, marked with who took it on.
    offline = page.locator(ITEMS, has_text="is offline")
    offline.get_by_role("button", name="Acknowledge").click()
    expect(offline).to_contain_text(f"acknowledged by {staff_user.username}")
    expect(offline.get_by_role("button", name="Acknowledge")).to_have_count(0)
    assert Alert.objects.get(subject="machine:ESP32_0000000000AA").state == AlertState.ACKNOWLEDGED

    # A new condition appears without a reload.
    Slot.objects.filter(device=machine, number=3).update(quantity=0)
    evaluation.run_checks()
    expect(page.locator(ITEMS, has_text="Empty: slot 3")).to_have_count(1)
    expect(page.locator("#attention-count")).to_have_text("4 open")
