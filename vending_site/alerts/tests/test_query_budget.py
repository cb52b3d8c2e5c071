"""Evaluating the rules costs a constant number of queries whatever the fleet's size: each
check is one aggregate query, and alerts that stay open are refreshed in one UPDATE."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inventory.models import Slot
from inventory.services import set_stock
from tests.factories import stocked_device
from transactions.choices import TransactionState
from transactions.models import Transaction
from vending_site.alerts import registry
from vending_site.alerts.evaluation import run_checks
from vending_site.alerts.models import Alert, AlertRule

pytestmark = pytest.mark.django_db

NOW = timezone.now()
# Nine rules, each in a savepoint: check, machines' context, open alerts, one UPDATE.
BUDGET = 60


def vend(slot, state, minutes_ago: int) -> Transaction:
    moment = NOW - timedelta(minutes=minutes_ago)
    return Transaction.objects.create(
        device=slot.device,
        slot=slot,
        slot_number=slot.number,
        product_name="Cola",
        product_sku="COLA",
        price="1.00",
        state=state,
        created_at=moment,
        completed_at=None if state == TransactionState.UNCONFIRMED else moment,
    )


def add_machines(first: int, count: int) -> None:
    """Machines offline for an hour, each with every condition a rule looks for."""
    for number in range(first, first + count):
        device = stocked_device(f"ESP32_{number:012X}", last_seen=NOW - timedelta(hours=1))
        slots = list(Slot.objects.filter(device=device).order_by("number"))
        set_stock(slot=slots[0], quantity=0)  # empty
        set_stock(slot=slots[1], quantity=1)  # low
        Slot.objects.filter(pk=slots[2].pk).update(quantity=4)  # off the ledger
        vend(slots[3], TransactionState.UNCONFIRMED, 5)
        for minutes in range(3):
            vend(slots[4], TransactionState.FAILED, 10 + minutes)


def queries_of_each_check() -> dict[str, int]:
    counts = {}
    for key, spec in registry.rules().items():
        rule = AlertRule.objects.get(key=key)
        with CaptureQueriesContext(connection) as captured:
            spec.check(rule, NOW)
        counts[key] = len(captured)
    return counts


def test_each_check_costs_the_same_queries_for_two_machines_and_for_eight():
    add_machines(1, 2)
    small = queries_of_each_check()
    add_machines(3, 6)

    assert queries_of_each_check() == small
    assert max(small.values()) == 1


def test_evaluating_a_fleet_whose_alerts_stay_open_costs_a_constant_budget(
    django_assert_max_num_queries,
):
    # Six minutes apart, so the rules that run every few minutes run each time, and no
    # cooldown (30 minutes at least) runs out.
    add_machines(1, 2)
    run_checks(now=NOW)
    with CaptureQueriesContext(connection) as small:
        run_checks(now=NOW + timedelta(minutes=6))
    add_machines(3, 6)
    run_checks(now=NOW + timedelta(minutes=12))  # opens the new machines' alerts
    opened = Alert.objects.count()

    with django_assert_max_num_queries(BUDGET) as large:
        run_checks(now=NOW + timedelta(minutes=18))

    assert len(large) == len(small)
    assert Alert.objects.count() == opened
    # Each machine: offline, empty, low, ledger, unconfirmed, failing.
    assert opened == 8 * 6
