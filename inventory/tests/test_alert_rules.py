"""The stock's alert rules: empty and low slots (with stock.empty and stock.low) and the
integrity check of each slot's quantity against its ledger."""

import pytest
from django.utils import timezone

from inventory.choices import MovementReason
from inventory.models import Slot
from inventory.services import set_stock
from tests.factories import stocked_device
from vending_site.alerts import registry
from vending_site.alerts.evaluation import evaluate
from vending_site.alerts.models import Alert, AlertRule, AlertState
from vending_site.alerts.tests.helpers import messages, subscriber

pytestmark = pytest.mark.django_db


def check(key: str) -> list[Alert]:
    evaluate(AlertRule.objects.get(key=key), registry.get(key), now=timezone.now())
    return list(Alert.objects.filter(rule__key=key).exclude(state=AlertState.RESOLVED))


@pytest.fixture
def machine():
    """Five slots of five units each, stocked through the ledger (low threshold 2)."""
    return stocked_device("ESP32_0000000000C1", quantity=5)


def slot(machine, number: int) -> Slot:
    return Slot.objects.get(device=machine, number=number)


def test_an_empty_slot_opens_an_alert_and_sends_stock_empty(machine):
    subscriber()
    set_stock(slot=slot(machine, 2), quantity=0)

    (alert,) = check("slot_empty")

    assert alert.subject == f"slot:{slot(machine, 2).pk}"
    assert alert.detail["slot"] == 2 and alert.tags["device"] == machine.device_id
    (sent,) = messages("stock.empty")
    assert sent.data["device_id"] == machine.device_id and sent.data["quantity"] == 0
    assert check("slot_low") == []  # empty is not low as well


def test_restocking_resolves_the_empty_alert(machine):
    set_stock(slot=slot(machine, 2), quantity=0)
    check("slot_empty")

    set_stock(slot=slot(machine, 2), quantity=8, reason=MovementReason.RESTOCK)

    assert check("slot_empty") == []


def test_a_disabled_slot_or_one_without_product_is_never_empty(machine):
    for number in (1, 2):
        set_stock(slot=slot(machine, number), quantity=0)
    Slot.objects.filter(device=machine, number=1).update(enabled=False)
    Slot.objects.filter(device=machine, number=2).update(product=None)

    assert check("slot_empty") == []


def test_a_slot_at_its_own_threshold_is_low_and_sends_stock_low(machine):
    subscriber()
    Slot.objects.filter(device=machine, number=3).update(low_stock_threshold=4)
    set_stock(slot=slot(machine, 3), quantity=4)
    set_stock(slot=slot(machine, 4), quantity=3)  # above its threshold of 2

    (alert,) = check("slot_low")

    assert alert.detail["slot"] == 3 and alert.detail["low_stock_threshold"] == 4
    assert alert.severity == "info"
    assert len(messages("stock.low")) == 1


def test_stock_changed_outside_the_ledger_is_a_critical_alert_until_it_agrees(machine):
    Slot.objects.filter(device=machine, number=5).update(quantity=9)

    (alert,) = check("stock_ledger_mismatch")

    assert alert.severity == "critical"
    assert (alert.detail["quantity"], alert.detail["ledger"]) == (9, 5)
    Slot.objects.filter(device=machine, number=5).update(quantity=5)
    assert check("stock_ledger_mismatch") == []
