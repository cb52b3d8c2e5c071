"""The site's own rules: a service process gone silent, an endpoint whose deliveries fail."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from vending_site.alerts import registry
from vending_site.alerts.evaluation import evaluate
from vending_site.alerts.models import Alert, AlertRule, AlertState
from vending_site.models import ServiceHeartbeat
from vending_site.notify.events import emit
from vending_site.notify.models import Delivery, DeliveryState

from .helpers import subscriber

pytestmark = pytest.mark.django_db


def check(key: str, now=None) -> list[Alert]:
    evaluate(AlertRule.objects.get(key=key), registry.get(key), now=now or timezone.now())
    return list(Alert.objects.filter(rule__key=key).exclude(state=AlertState.RESOLVED))


def heartbeat(name: str, *, age: float, stopped: bool = False) -> ServiceHeartbeat:
    now = timezone.now()
    return ServiceHeartbeat.objects.create(
        name=name,
        pid=42,
        host="box",
        started_at=now - timedelta(hours=1),
        beat_at=now - timedelta(seconds=age),
        stopped_at=now if stopped else None,
    )


def test_a_service_three_beats_late_is_silent_and_a_clean_stop_is_not(settings):
    settings.SERVICE_HEARTBEAT_SECONDS = 5
    heartbeat("sweeper", age=16)
    heartbeat("discovery", age=14)  # within three beats
    heartbeat("serial_bridge", age=600, stopped=True)  # stopped cleanly

    (alert,) = check("service_silent")

    assert alert.subject == "service:sweeper" and alert.severity == "critical"


def test_a_silent_service_beating_again_resolves(settings):
    settings.SERVICE_HEARTBEAT_SECONDS = 5
    row = heartbeat("notifier", age=60)
    check("service_silent")

    ServiceHeartbeat.objects.filter(pk=row.pk).update(beat_at=timezone.now())

    assert check("service_silent") == []


def deliveries(endpoint, *states) -> None:
    """One delivery to ``endpoint`` per state, in message order."""
    for state in states:
        emit("vend.succeeded", {"n": 1}, subject="vend:1")
        latest = Delivery.objects.filter(endpoint=endpoint).latest("id")
        Delivery.objects.filter(pk=latest.pk).update(state=state)


def test_an_endpoint_whose_latest_delivery_failed_for_good_opens_an_alert():
    erp = subscriber("erp", events=["vend.succeeded"])
    deliveries(erp, DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.PENDING)

    (alert,) = check("delivery_failed")

    assert alert.subject == f"endpoint:{erp.pk}" and alert.detail["endpoint"] == "erp"


def test_a_later_delivery_that_arrives_resolves_it():
    erp = subscriber("erp", events=["vend.succeeded"])
    deliveries(erp, DeliveryState.FAILED)
    check("delivery_failed")

    deliveries(erp, DeliveryState.DELIVERED)

    assert check("delivery_failed") == []


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the query plan of PostgreSQL is what is pinned"
)
def test_the_failing_endpoint_check_does_not_read_every_delivery_kept():
    # Run every ALERT_CHECK_SECONDS over 30 days of deliveries: an aggregate over the whole
    # table took 0.4 s at a million rows. Each endpoint's newest rows are read instead.
    from vending_site.alerts.builtin import failing_endpoints

    erp = subscriber("erp", events=["vend.succeeded"])
    message = emit("vend.succeeded", {"n": 1}, subject="vend:1")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO vending_site_delivery (message_id, endpoint_id, state, attempts,"
            " next_attempt_at, claimed_by, last_error, created_at)"
            " SELECT %s, %s, 'delivered', 1, now(), '', '', now() - g * interval '1 second'"
            " FROM generate_series(1, 50000) g",
            [message.pk, erp.pk],
        )
        cursor.execute("ANALYZE vending_site_delivery")
    rule = AlertRule.objects.get(key="delivery_failed")
    with CaptureQueriesContext(connection) as queries:
        failing_endpoints(rule, timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + queries[-1]["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "Seq Scan on vending_site_delivery" not in plan, plan
    assert "Aggregate" not in plan, plan


def test_a_failing_endpoint_staff_switched_off_is_no_longer_an_alert():
    # Switched off, it gets no new delivery that could ever succeed: resolved by hand, its
    # alert came back after every cooldown, for good.
    erp = subscriber("erp", events=["vend.succeeded"])
    deliveries(erp, DeliveryState.FAILED)
    assert len(check("delivery_failed")) == 1

    erp.is_active = False
    erp.save()

    assert check("delivery_failed") == []


def test_polls_shed_in_the_window_open_an_alert_and_a_quiet_window_resolves_it(monkeypatch):
    from vending_site.alerts import builtin

    shed = {"total": 100.0}  # another xdist worker may shed meanwhile: a counter of our own
    monkeypatch.setattr(builtin, "shed_total", lambda: shed["total"])
    start = timezone.now()

    assert check("polls_shed", now=start) == []  # the first reading: nothing to compare with
    shed["total"] += 25
    (alert,) = check("polls_shed", now=start + timedelta(minutes=1))
    later = check("polls_shed", now=start + timedelta(minutes=7))

    assert alert.subject == "service:web" and alert.detail["shed"] == 25
    assert later == []  # no poll shed in the last 5 minutes
