"""The vends' alert rules: an unconfirmed vend needs a person (with the action to settle
it), a slot failing 3 of its last 10 vends is a weak motor."""

from datetime import timedelta

import pytest
from django.utils import timezone

from transactions.choices import TransactionState
from transactions.delivery import claim_next_command
from transactions.lifecycle import transition
from transactions.models import Transaction
from transactions.services import request_vend, resolve_unconfirmed
from vending_site.alerts import registry
from vending_site.alerts.evaluation import evaluate
from vending_site.alerts.models import Alert, AlertRule, AlertState

pytestmark = pytest.mark.django_db


def check(key: str, now=None) -> list[Alert]:
    """Evaluate one rule now; its alerts not resolved."""
    evaluate(AlertRule.objects.get(key=key), registry.get(key), now=now or timezone.now())
    return list(Alert.objects.filter(rule__key=key).exclude(state=AlertState.RESOLVED))


def unconfirmed_vend(device, user, slot_number: int = 1) -> Transaction:
    txn = request_vend(device=device, slot_number=slot_number, user=user)
    claim_next_command(device=device)
    txn = Transaction.objects.select_related("device", "slot").get(pk=txn.pk)
    return transition(txn, TransactionState.UNCONFIRMED)


def test_an_unconfirmed_vend_opens_a_critical_alert_with_the_action_to_settle_it(
    online_device, staff
):
    txn = unconfirmed_vend(online_device, staff)

    (alert,) = check("vend_unconfirmed")

    assert alert.subject == f"vend:{txn.pk}" and alert.severity == "critical"
    assert alert.detail["action"] == {"kind": "settle_vend", "transaction_id": str(txn.pk)}
    assert alert.tags["device"] == online_device.device_id


def test_settling_the_vend_resolves_its_alert(online_device, staff):
    txn = unconfirmed_vend(online_device, staff)
    check("vend_unconfirmed")

    resolve_unconfirmed(txn=txn, dispensed=True, user=staff)

    assert check("vend_unconfirmed") == []
    assert Alert.objects.get().resolved_by is None


def settled(slot, outcomes: str, *, start) -> None:
    """Vends of ``slot`` settled one minute apart, oldest first: ``s`` succeeded, ``f``
    failed."""
    for index, outcome in enumerate(outcomes):
        moment = start + timedelta(minutes=index)
        Transaction.objects.create(
            device=slot.device,
            slot=slot,
            slot_number=slot.number,
            product_name="Cola",
            product_sku="COLA",
            price="1.00",
            state=TransactionState.FAILED if outcome == "f" else TransactionState.SUCCEEDED,
            created_at=moment,
            completed_at=moment,
        )


def test_three_failures_among_the_last_ten_vends_of_a_slot_open_an_alert(online_device):
    weak, fine = online_device.slots.order_by("number")[:2]
    start = timezone.now() - timedelta(hours=3)
    # Old failures beyond the last ten do not count: only 3 of the last 10 failed.
    settled(weak, "ffff" + "ssssfssfsf", start=start)
    settled(fine, "ffff" + "sssssssssf", start=start)

    (alert,) = check("slot_failure_rate")

    assert alert.subject == f"slot:{weak.pk}"
    assert (alert.detail["failed"], alert.detail["vends"]) == (3, 10)
    assert alert.tags["device"] == online_device.device_id


def test_the_alert_resolves_once_the_slot_vends_well_again(online_device):
    slot = online_device.slots.order_by("number").first()
    start = timezone.now() - timedelta(hours=3)
    settled(slot, "fffsss", start=start)
    assert len(check("slot_failure_rate")) == 1

    settled(slot, "sssssss", start=start + timedelta(hours=1))

    assert check("slot_failure_rate") == []


def test_the_failure_threshold_and_window_are_the_rules(online_device):
    slot = online_device.slots.order_by("number").first()
    settled(slot, "ffsss", start=timezone.now() - timedelta(hours=1))
    assert check("slot_failure_rate") == []

    AlertRule.objects.filter(key="slot_failure_rate").update(threshold=2, window=5)

    assert len(check("slot_failure_rate")) == 1
