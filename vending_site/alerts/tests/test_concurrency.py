"""Two notifiers evaluating at once, each thread with its own database connection: one
alert, one announcement, one reminder, one resolution."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tests.factories import DeviceFactory
from tests.test_concurrency import race
from vending_site.alerts import registry
from vending_site.alerts.evaluation import ensure_rules, run_checks
from vending_site.alerts.models import Alert, AlertState
from vending_site.alerts.registry import Finding, RuleSpec

from .helpers import messages, subscriber

pytestmark = pytest.mark.django_db(transaction=True)

T0 = timezone.now().replace(microsecond=0)
TIMEOUT = 30


def test_two_notifiers_released_together_open_one_alert_and_announce_it_once():
    subscriber()
    DeviceFactory(device_id="ESP32_0000000000D1", last_seen=T0 - timedelta(hours=1))

    race(2, lambda i: run_checks(now=T0))

    assert Alert.objects.filter(rule__key="machine_offline").count() == 1
    assert len(messages("alert.opened", "machine:ESP32_0000000000D1")) == 1


@pytest.fixture
def lockstep():
    """A rule whose check holds both evaluators until both have found the subject, so both
    go on to open, remind or resolve the same alert: the race the database must settle."""
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    state = {"found": True}

    def check(rule, now):
        barrier.wait()
        if not state["found"]:
            return []
        return [Finding(subject="thing:1", title="The thing is broken")]

    registry.register(
        RuleSpec(key="test_lockstep", name="Lockstep", check=check, cooldown_minutes=30)
    )
    others = {key: spec for key, spec in registry.rules().items() if key != "test_lockstep"}
    for key in others:
        registry.unregister(key)
    ensure_rules()
    yield state
    registry.unregister("test_lockstep")
    for spec in others.values():
        registry.register(spec)


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite runs one writing transaction at a time: both can never reach the INSERT",
)
def test_evaluators_that_both_found_the_subject_still_open_remind_and_resolve_once(lockstep):
    subscriber()

    race(2, lambda i: run_checks(now=T0))
    assert Alert.objects.filter(rule__key="test_lockstep").count() == 1
    assert len(messages("alert.opened")) == 1

    race(2, lambda i: run_checks(now=T0 + timedelta(minutes=30)))
    alert = Alert.objects.get(rule__key="test_lockstep")
    assert alert.notifications == 2
    assert [m.data["reminder"] for m in messages("alert.opened")] == [False, True]

    lockstep["found"] = False
    race(2, lambda i: run_checks(now=T0 + timedelta(minutes=31)))
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert len(messages("alert.resolved")) == 1
