"""The alert lifecycle as run_checks drives it, on the machine_offline rule: time is
simulated by passing ``now``; every message an endpoint would get is a Message row."""

from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, Location, Route, RouteStop
from tests.factories import DeviceFactory, staff_with_role
from vending_site.alerts import registry, services
from vending_site.alerts.evaluation import ensure_rules, run_checks
from vending_site.alerts.models import Alert, AlertRule, AlertState
from vending_site.auth.roles import OPERATOR
from vending_site.models import LiveEvent
from vending_site.notify.models import Delivery

from .helpers import messages, rule, subscriber

pytestmark = pytest.mark.django_db

T0 = timezone.now().replace(microsecond=0)
SUBJECT = "machine:ESP32_00000000AA01"


@pytest.fixture
def machine():
    """A machine last heard at T0, standing at a location on two routes."""
    here = Location.objects.create(name="Lobby")
    routes = [Route.objects.create(name=name) for name in ("North", "South")]
    for route in routes:
        RouteStop.objects.create(route=route, location=here, position=1)
    return DeviceFactory(device_id="ESP32_00000000AA01", last_seen=T0, location=here)


def ticks(start, end, *, every: int = 30):
    """The moments a notifier would check at from ``start`` to ``end``. Every 30 s rather
    than the default 10: an hour is then 120 evaluations of every rule, not 360 (the suite
    runs this on both databases), and every claim below holds at any step."""
    moment = start
    while moment <= end:
        yield moment
        moment += timedelta(seconds=every)


def test_every_registered_rule_has_a_row_with_its_defaults():
    assert AlertRule.objects.get(key="machine_offline").threshold == 10
    assert set(AlertRule.objects.values_list("key", flat=True)) >= {
        "machine_offline",
        "machine_awaiting_approval",
        "slot_empty",
        "slot_low",
        "stock_ledger_mismatch",
        "vend_unconfirmed",
        "slot_failure_rate",
        "service_silent",
        "delivery_failed",
    }


def test_creating_the_rules_again_keeps_what_staff_edited():
    AlertRule.objects.filter(key="machine_offline").update(threshold=30, enabled=False)
    AlertRule.objects.filter(key="slot_low").delete()

    assert ensure_rules() == 1

    edited = rule("machine_offline")
    assert (edited.threshold, edited.enabled) == (30, False)
    assert rule("slot_low").cooldown_minutes == 0


def test_an_hour_offline_is_one_alert_reminded_per_cooldown_and_resolved_when_back(machine):
    ops, erp = subscriber("ops"), subscriber("erp", events=["alert.opened", "alert.resolved"])
    offline_rule = rule("machine_offline")
    offline_rule.cooldown_minutes = 30
    offline_rule.save()

    for now in ticks(T0, T0 + timedelta(hours=1, minutes=11)):
        run_checks(now=now)

    alert = Alert.objects.get(rule__key="machine_offline")
    assert alert.subject == SUBJECT and alert.state == AlertState.OPEN
    # Offline after 10 minutes (at the first check past them: "more than"), reminded 30 and
    # 60 minutes later.
    assert alert.opened_at == T0 + timedelta(minutes=10, seconds=30)
    opened = messages("alert.opened", SUBJECT)
    assert [m.data["reminder"] for m in opened] == [False, True, True]
    assert [m.data["count"] for m in opened] == [1, 2, 3]
    assert alert.notifications == 3
    assert len(messages("machine.offline")) == 1
    # One delivery per subscribed endpoint for each message.
    for message in opened:
        assert set(Delivery.objects.filter(message=message).values_list("endpoint", flat=True)) == {
            ops.pk,
            erp.pk,
        }
    assert opened[0].tags["device"] == "ESP32_00000000AA01"
    assert opened[0].tags["location"] == machine.location_id
    assert len(opened[0].tags["route"]) == 2
    assert opened[0].tags["rule"] == "machine_offline"

    back = T0 + timedelta(hours=1, minutes=12)
    Device.objects.filter(pk=machine.pk).update(last_seen=back)
    for now in ticks(back, back + timedelta(minutes=5)):
        run_checks(now=now)

    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_by is None
    assert alert.resolved_at == back
    assert len(messages("alert.resolved", SUBJECT)) == 1
    online = messages("machine.online")
    assert len(online) == 1 and online[0].data["device_id"] == "ESP32_00000000AA01"
    assert Alert.objects.count() == 1


def test_an_acknowledged_alert_is_not_reminded_of(machine):
    subscriber()
    run_checks(now=T0 + timedelta(minutes=11))
    alert = Alert.objects.get()
    services.acknowledge(alert_id=alert.pk, user=staff_with_role(OPERATOR), note="on my way")

    run_checks(now=T0 + timedelta(hours=5))

    alert.refresh_from_db()
    assert alert.state == AlertState.ACKNOWLEDGED and alert.notifications == 1
    assert len(messages("alert.opened")) == 1


def test_a_rule_with_no_cooldown_never_reminds(machine):
    subscriber()
    AlertRule.objects.filter(key="machine_offline").update(cooldown_minutes=0)

    run_checks(now=T0 + timedelta(minutes=11))
    run_checks(now=T0 + timedelta(days=2))

    assert len(messages("alert.opened")) == 1


def test_disabling_a_rule_resolves_its_alerts_without_the_rules_own_event(machine):
    subscriber()
    run_checks(now=T0 + timedelta(minutes=11))
    AlertRule.objects.filter(key="machine_offline").update(enabled=False)

    run_checks(now=T0 + timedelta(minutes=12))

    alert = Alert.objects.get()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolution_note == "The rule was disabled."
    assert len(messages("alert.resolved")) == 1
    assert messages("machine.online") == []
    run_checks(now=T0 + timedelta(minutes=30))
    assert Alert.objects.count() == 1


def test_a_machine_in_maintenance_opens_no_alert(machine):
    subscriber()
    Device.objects.filter(pk=machine.pk).update(maintenance_until=T0 + timedelta(hours=2))

    run_checks(now=T0 + timedelta(hours=1))

    assert not Alert.objects.exists() and messages("machine.offline") == []
    run_checks(now=T0 + timedelta(hours=2, seconds=10))  # maintenance over, still offline
    assert Alert.objects.get().state == AlertState.OPEN


def test_maintenance_keeps_an_open_alert_open_without_reminders(machine):
    subscriber()
    run_checks(now=T0 + timedelta(minutes=11))
    Device.objects.filter(pk=machine.pk).update(maintenance_until=T0 + timedelta(hours=5))

    run_checks(now=T0 + timedelta(hours=3))

    alert = Alert.objects.get()
    assert alert.state == AlertState.OPEN and alert.notifications == 1
    assert alert.checked_at == T0 + timedelta(hours=3)
    assert len(messages("alert.opened")) == 1


def test_an_alert_staff_resolved_while_the_condition_holds_stays_quiet_for_the_cooldown(machine):
    subscriber()
    run_checks(now=T0 + timedelta(minutes=11))
    services.resolve(
        alert_id=Alert.objects.get().pk,
        user=staff_with_role(OPERATOR),
        note="unplugged on purpose",
        now=T0 + timedelta(minutes=12),
    )

    run_checks(now=T0 + timedelta(minutes=40))
    assert Alert.objects.exclude(state=AlertState.RESOLVED).count() == 0

    run_checks(now=T0 + timedelta(minutes=73))  # the 60-minute cooldown is over
    assert Alert.objects.filter(state=AlertState.OPEN).count() == 1


def test_each_change_is_published_to_live_pages(machine):
    run_checks(now=T0 + timedelta(minutes=11))
    Device.objects.filter(pk=machine.pk).update(last_seen=T0 + timedelta(minutes=12))
    run_checks(now=T0 + timedelta(minutes=12))

    states = [e.payload["state"] for e in LiveEvent.objects.filter(kind="alert").order_by("id")]
    assert states == ["open", "resolved"]
    payload = LiveEvent.objects.filter(kind="alert").first().payload
    assert payload["rule"] == "machine_offline" and payload["device_id"] == machine.device_id
    assert payload["action"] is None


def test_a_failing_check_does_not_stop_the_other_rules(machine, monkeypatch):
    def broken(rule, now):
        raise RuntimeError("boom")

    spec = registry.get("service_silent")
    monkeypatch.setitem(registry._rules, "service_silent", replace(spec, check=broken))

    run_checks(now=T0 + timedelta(minutes=11))

    assert Alert.objects.filter(rule__key="machine_offline").count() == 1


def test_a_flapping_machine_is_announced_once_per_cooldown_not_on_every_return(machine):
    # Heard from every 11 minutes for an hour: offline (10 min) then back, six times over.
    subscriber()
    flaps = [T0 + timedelta(minutes=11 * n) for n in range(6)]
    for heard in flaps:
        Device.objects.filter(pk=machine.pk).update(last_seen=heard)
        for now in ticks(heard, heard + timedelta(minutes=11) - timedelta(seconds=1)):
            run_checks(now=now)

    opened = messages("alert.opened", SUBJECT)
    assert [m.data["reminder"] for m in opened] == [False]  # the cooldown is an hour
    assert len(messages("alert.resolved", SUBJECT)) == 1  # only what was announced
    assert Alert.objects.count() == 6  # each outage is still an alert, on the page
    # The integrators' facts are not muted: each outage and return is sent.
    assert len(messages("machine.offline")) == len(messages("machine.online")) + 1 == 6

    Device.objects.filter(pk=machine.pk).update(last_seen=T0)  # then it stays away
    later = T0 + timedelta(minutes=66)
    for now in ticks(later, later + timedelta(minutes=10)):
        run_checks(now=now)
    reminded = messages("alert.opened", SUBJECT)[1:]
    assert [m.data["reminder"] for m in reminded] == [True]  # a cooldown after the first
