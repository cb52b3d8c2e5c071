"""The alerts' admin screens (rules tuned, alerts acknowledged and resolved by whoever
clicked) and the open alerts per rule at /metrics."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from devices.models import Location, Route, RouteStop
from tests.factories import DeviceFactory, staff_with_role
from vending_site.alerts.models import Alert, AlertRule, AlertState
from vending_site.auth import roles

from .helpers import rule

pytestmark = pytest.mark.django_db


def alert(subject="machine:A", key="machine_offline", **fields) -> Alert:
    return Alert.objects.create(
        rule=rule(key), subject=subject, title=subject, severity="warning", **fields
    )


def test_alert_admin_pages_load_and_filter_by_state_rule_and_severity(client):
    client.force_login(staff_with_role(roles.OPERATOR))
    shown = alert()
    url = reverse("admin:vending_site_alert_changelist")

    assert client.get(url, {"state": "open", "rule__id__exact": shown.rule_id}).status_code == 200
    assert client.get(url, {"severity": "warning"}).status_code == 200
    page = client.get(reverse("admin:vending_site_alert_change", args=[shown.pk]))
    assert page.status_code == 200 and b'name="title"' not in page.content  # read-only
    assert client.get(reverse("admin:vending_site_alertrule_changelist")).status_code == 200


def test_admin_actions_acknowledge_and_resolve_recording_the_user(client):
    technician = staff_with_role(roles.TECHNICIAN)
    client.force_login(technician)
    first, second = alert("machine:A"), alert("machine:B")
    url = reverse("admin:vending_site_alert_changelist")

    client.post(url, {"action": "acknowledge", ACTION_CHECKBOX_NAME: [first.pk]})
    client.post(url, {"action": "resolve", ACTION_CHECKBOX_NAME: [first.pk, second.pk]})

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.acknowledged_by == technician
    assert (first.state, second.state) == (AlertState.RESOLVED, AlertState.RESOLVED)
    assert second.resolved_by == technician


def test_a_viewer_sees_alerts_but_has_no_actions(client):
    client.force_login(staff_with_role(roles.VIEWER))
    shown = alert()
    url = reverse("admin:vending_site_alert_changelist")

    assert client.get(url).status_code == 200
    client.post(url, {"action": "resolve", ACTION_CHECKBOX_NAME: [shown.pk]})

    shown.refresh_from_db()
    assert shown.state == AlertState.OPEN


def test_a_driver_sees_in_the_admin_only_the_alerts_of_their_routes_machines(client):
    here = Location.objects.create(name="Lobby")
    DeviceFactory(device_id="ESP32_0000000000E1", location=here)
    driver = staff_with_role(roles.DRIVER)
    route = Route.objects.create(name="Morning", driver=driver)
    RouteStop.objects.create(route=route, location=here, position=1)
    mine = alert("machine:ESP32_0000000000E1", tags={"device": "ESP32_0000000000E1"})
    alert("machine:ESP32_0000000000E2", tags={"device": "ESP32_0000000000E2"})
    client.force_login(driver)

    response = client.get(reverse("admin:vending_site_alert_changelist"))

    assert list(response.context["cl"].result_list) == [mine]


def test_an_operator_tunes_a_rule_in_the_admin(client):
    client.force_login(staff_with_role(roles.OPERATOR))
    offline = rule("machine_offline")

    response = client.post(
        reverse("admin:vending_site_alertrule_change", args=[offline.pk]),
        {
            "name": offline.name,
            "description": offline.description,
            "enabled": "on",
            "severity": "critical",
            "threshold": "25",
            "window": "",
            "cooldown_minutes": "15",
        },
    )

    assert response.status_code == 302, response.content[:500]
    offline.refresh_from_db()
    assert (offline.threshold, offline.severity, offline.cooldown_minutes) == (25, "critical", 15)
    assert AlertRule.objects.get(key="machine_offline").key == "machine_offline"


def test_metrics_count_unresolved_alerts_per_rule(client):
    alert("machine:A")
    alert("machine:B", state=AlertState.ACKNOWLEDGED)
    alert("machine:C", state=AlertState.RESOLVED)
    alert("vend:1", key="vend_unconfirmed")

    response = client.get("/metrics")

    samples = {
        sample.labels.get("rule"): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if sample.name == "vending_alerts_open"
    }
    assert samples["machine_offline"] == 2
    assert samples["vend_unconfirmed"] == 1
    assert samples["slot_empty"] == 0


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("machine_offline", "threshold"),
        ("slot_failure_rate", "window"),
        ("slot_failure_rate", "threshold"),
    ],
)
def test_a_threshold_or_window_of_zero_is_refused_in_the_admin(client, key, field):
    # machine_offline at 0 minutes found every machine offline, always (a fleet-wide storm);
    # slot_failure_rate at 0 failures found every slot failing.
    client.force_login(staff_with_role(roles.OPERATOR))
    tuned = rule(key)
    form = {
        "name": tuned.name,
        "description": tuned.description,
        "enabled": "on",
        "severity": tuned.severity,
        "threshold": str(tuned.threshold or ""),
        "window": str(tuned.window or ""),
        "cooldown_minutes": str(tuned.cooldown_minutes),
    }
    form[field] = "0"

    response = client.post(reverse("admin:vending_site_alertrule_change", args=[tuned.pk]), form)

    assert response.status_code == 200  # the form again, with its error
    assert "at least 1" in response.content.decode()
    tuned.refresh_from_db()
    assert getattr(tuned, field) != 0
