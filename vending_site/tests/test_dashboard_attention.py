"""The dashboard's "Needs attention": the unresolved alerts in its state, scoped like the
machines, and the acknowledgement it offers (with the alert service's refusals)."""

import json

import pytest
from django.test import Client
from django.utils import timezone

from devices.models import Location, Route, RouteStop
from tests.factories import DeviceFactory, staff_with_role
from vending_site.alerts.models import Alert, AlertRule, AlertState
from vending_site.auth import roles
from vending_site.models import LiveEvent

pytestmark = pytest.mark.django_db

STATE_URL = "/dashboard/api/state"
ACKNOWLEDGE_URL = "/dashboard/api/alerts/acknowledge"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def acknowledge(client: Client, data) -> dict:
    return client.post(ACKNOWLEDGE_URL, data=json.dumps(data), content_type="application/json")


def alert(rule_key: str, subject: str, *, severity="warning", device=None, **fields) -> Alert:
    return Alert.objects.create(
        rule=AlertRule.objects.get(key=rule_key),
        subject=subject,
        title=f"{rule_key} on {subject}",
        severity=severity,
        tags={"device": device} if device else {},
        **fields,
    )


def test_the_state_lists_unresolved_alerts_open_and_most_severe_first():
    offline = alert("machine_offline", "machine:A", device="A")
    unconfirmed = alert(
        "vend_unconfirmed",
        "vend:1",
        severity="critical",
        device="A",
        detail={"action": {"kind": "settle_vend", "transaction_id": "1"}},
    )
    taken = alert("slot_low", "slot:1", state=AlertState.ACKNOWLEDGED, severity="critical")
    alert("slot_empty", "slot:2", state=AlertState.RESOLVED, resolved_at=timezone.now())

    rows = logged_in(staff_with_role(roles.OPERATOR)).get(STATE_URL).json()["alerts"]

    assert [row["id"] for row in rows] == [unconfirmed.pk, offline.pk, taken.pk]
    assert rows[0]["action"] == {"kind": "settle_vend", "transaction_id": "1"}
    assert rows[2]["state"] == "acknowledged"


def test_a_driver_sees_only_the_alerts_of_the_machines_on_their_routes():
    driver = staff_with_role(roles.DRIVER)
    here = Location.objects.create(name="Lobby")
    DeviceFactory(device_id="ESP32_000000000001", location=here)
    DeviceFactory(device_id="ESP32_000000000002")
    route = Route.objects.create(name="Morning", driver=driver)
    RouteStop.objects.create(route=route, location=here, position=1)
    mine = alert("machine_offline", "machine:1", device="ESP32_000000000001")
    alert("machine_offline", "machine:2", device="ESP32_000000000002")
    alert("service_silent", "service:sweeper")

    rows = logged_in(driver).get(STATE_URL).json()["alerts"]

    assert [row["id"] for row in rows] == [mine.pk]


def test_a_technician_acknowledges_an_alert_and_every_page_hears_of_it():
    technician = staff_with_role(roles.TECHNICIAN)
    offline = alert("machine_offline", "machine:A", device="A")

    response = acknowledge(logged_in(technician), {"alert_id": offline.pk, "note": "on my way"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == technician.username
    assert body["acknowledgement_note"] == "on my way"
    offline.refresh_from_db()
    assert offline.state == AlertState.ACKNOWLEDGED and offline.acknowledged_by == technician
    event = LiveEvent.objects.filter(kind="alert").latest("id")
    assert event.payload["id"] == offline.pk and event.payload["state"] == "acknowledged"


def test_a_viewer_may_look_at_alerts_but_not_acknowledge_them():
    viewer = staff_with_role(roles.VIEWER)
    offline = alert("machine_offline", "machine:A", device="A")
    client = logged_in(viewer)

    assert [row["id"] for row in client.get(STATE_URL).json()["alerts"]] == [offline.pk]
    response = acknowledge(client, {"alert_id": offline.pk})

    assert response.status_code == 403
    assert "vending_site.change_alert" in response.json()["detail"]
    offline.refresh_from_db()
    assert offline.state == AlertState.OPEN


def test_acknowledging_refuses_an_unknown_or_resolved_alert_and_a_bad_body():
    client = logged_in(staff_with_role(roles.OPERATOR))
    done = alert("slot_empty", "slot:2", state=AlertState.RESOLVED, resolved_at=timezone.now())

    unknown = acknowledge(client, {"alert_id": 999_999})
    resolved = acknowledge(client, {"alert_id": done.pk})
    missing = acknowledge(client, {"note": "which one?"})
    not_an_object = acknowledge(client, ["alert_id", 1])

    assert unknown.status_code == 404 and "999999" in unknown.json()["detail"]
    assert resolved.status_code == 409 and "already resolved" in resolved.json()["detail"]
    assert missing.status_code == 400 and "alert_id" in json.dumps(missing.json())
    assert not_an_object.status_code == 400
    assert "JSON object" in not_an_object.json()["detail"]


def test_the_page_offers_acknowledgement_only_to_roles_that_may():
    offline = alert("machine_offline", "machine:A", device="A")
    html = logged_in(staff_with_role(roles.VIEWER)).get("/").content.decode()

    assert 'data-can-acknowledge="false"' in html
    assert "acknowledging alerts (<code>vending_site.change_alert</code>)" in html
    html = logged_in(staff_with_role(roles.TECHNICIAN)).get("/").content.decode()
    assert 'data-can-acknowledge="true"' in html
    assert offline.title in html  # in the embedded state document
