"""Staff REST for alerts: list (by role; a Driver sees their routes' machines only),
acknowledge and resolve with their refusals (403, 404, 409, 400)."""

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from devices.models import Location, Route, RouteStop
from tests.factories import DeviceFactory, UserFactory, staff_with_role
from vending_site.alerts.models import Alert, AlertState
from vending_site.auth import roles
from vending_site.auth.permissions import lacks

from .helpers import messages, rule, subscriber

pytestmark = pytest.mark.django_db

LIST = "/api/v1/alerts/"


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def open_alert(subject="machine:ESP32_000000000001", device="ESP32_000000000001", **fields):
    fields.setdefault("rule", rule("machine_offline"))
    return Alert.objects.create(
        subject=subject,
        title=f"{subject} is offline",
        severity="warning",
        tags={"device": device},
        **fields,
    )


@pytest.mark.parametrize("role", [roles.OPERATOR, roles.TECHNICIAN, roles.VIEWER, roles.DRIVER])
def test_every_staff_role_may_list_alerts(role):
    alert = open_alert()
    user = staff_with_role(role)
    if role == roles.DRIVER:  # a Driver whose route reaches the machine
        here = Location.objects.create(name="Lobby")
        DeviceFactory(device_id="ESP32_000000000001", location=here)
        route = Route.objects.create(name="Morning", driver=user)
        RouteStop.objects.create(route=route, location=here, position=1)

    response = api(user).get(LIST)

    assert response.status_code == 200, response.content
    assert [row["id"] for row in response.json()["results"]] == [alert.pk]
    row = response.json()["results"][0]
    assert row["rule"] == "machine_offline" and row["state"] == "open"
    assert row["rule_name"] == "Machine offline" and row["action"] is None


def test_a_driver_sees_only_the_alerts_of_the_machines_on_their_routes():
    here = Location.objects.create(name="Lobby")
    DeviceFactory(device_id="ESP32_000000000001", location=here)
    DeviceFactory(device_id="ESP32_000000000002")
    driver = staff_with_role(roles.DRIVER)
    route = Route.objects.create(name="Morning", driver=driver)
    RouteStop.objects.create(route=route, location=here, position=1)
    mine = open_alert()
    open_alert(subject="machine:ESP32_000000000002", device="ESP32_000000000002")
    open_alert(subject="service:sweeper", device=None, rule=rule("service_silent"))

    response = api(driver).get(LIST)

    assert [row["id"] for row in response.json()["results"]] == [mine.pk]


def test_the_list_filters_by_state_and_rule_and_is_paginated():
    first = open_alert()
    open_alert(subject="machine:X", state=AlertState.RESOLVED)
    open_alert(subject="service:sweeper", rule=rule("service_silent"))
    client = api(staff_with_role(roles.VIEWER))

    by_state = client.get(LIST, {"state": "open", "rule": "machine_offline"}).json()
    assert [row["id"] for row in by_state["results"]] == [first.pk]
    page = client.get(LIST, {"limit": 1}).json()
    assert page["count"] == 3 and len(page["results"]) == 1 and page["next"]


def test_an_unknown_state_filter_is_a_400():
    response = api(staff_with_role(roles.VIEWER)).get(LIST, {"state": "sleeping"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_a_vend_client_may_not_list_alerts():
    response = api(UserFactory()).get(LIST)

    assert response.status_code == 403
    assert response.json()["code"] == "staff_only"


@pytest.mark.parametrize("role", [roles.OPERATOR, roles.TECHNICIAN])
def test_operators_and_technicians_acknowledge_with_a_note(role):
    alert = open_alert()
    user = staff_with_role(role)

    response = api(user).post(
        f"/api/v1/alerts/{alert.pk}/acknowledge/", {"note": "on my way"}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == user.username
    assert body["acknowledgement_note"] == "on my way"
    alert.refresh_from_db()
    assert alert.acknowledged_by == user and alert.acknowledged_at is not None


@pytest.mark.parametrize("role", [roles.VIEWER, roles.DRIVER])
def test_viewers_and_drivers_may_not_acknowledge_or_resolve(role):
    alert = open_alert()
    client = api(staff_with_role(role))

    for action in ("acknowledge", "resolve"):
        response = client.post(f"/api/v1/alerts/{alert.pk}/{action}/", {}, format="json")
        assert response.status_code == 403
        assert response.json() == {
            "detail": lacks("vending_site.change_alert"),
            "code": "permission_denied",
        }
    assert Alert.objects.get().state == AlertState.OPEN


def test_resolving_records_who_and_sends_alert_resolved():
    subscriber()
    alert = open_alert()
    user = staff_with_role(roles.TECHNICIAN)

    response = api(user).post(
        f"/api/v1/alerts/{alert.pk}/resolve", {"note": "replaced the cable"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["resolved_by"] == user.username
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_by == user
    assert alert.resolution_note == "replaced the cable"
    (sent,) = messages("alert.resolved")
    assert sent.data["resolved_by"] == user.username


def test_an_unknown_alert_is_a_404_with_a_message():
    client = api(staff_with_role(roles.OPERATOR))

    for path in ("/api/v1/alerts/999999/resolve/", "/api/v1/alerts/abc/acknowledge/"):
        response = client.post(path, {}, format="json")
        assert response.status_code == 404
        assert response.json()["code"] == "alert_not_found"
        assert "No alert" in response.json()["detail"]


def test_acting_on_a_resolved_alert_is_a_409_saying_so():
    alert = open_alert(state=AlertState.RESOLVED, resolved_at=timezone.now())
    client = api(staff_with_role(roles.OPERATOR))

    for action in ("acknowledge", "resolve"):
        response = client.post(f"/api/v1/alerts/{alert.pk}/{action}/", {}, format="json")
        assert response.status_code == 409
        assert response.json()["code"] == "alert_state_conflict"
        assert "already resolved" in response.json()["detail"]


def test_acknowledging_twice_is_a_409_naming_who_did():
    alert = open_alert()
    first, second = staff_with_role(roles.OPERATOR), staff_with_role(roles.TECHNICIAN)
    api(first).post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {}, format="json")

    response = api(second).post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {}, format="json")

    assert response.status_code == 409
    assert first.username in response.json()["detail"]


def test_a_note_too_long_or_not_in_an_object_is_a_400():
    alert = open_alert()
    client = api(staff_with_role(roles.OPERATOR))

    long = client.post(f"/api/v1/alerts/{alert.pk}/resolve/", {"note": "x" * 256}, format="json")
    listed = client.post(f"/api/v1/alerts/{alert.pk}/resolve/", [1], format="json")

    assert long.status_code == 400 and "note" in long.json()["errors"]
    assert listed.status_code == 400
    assert Alert.objects.get().state == AlertState.OPEN


def test_the_list_costs_the_same_queries_for_many_alerts(django_assert_max_num_queries):
    for number in range(30):
        open_alert(subject=f"machine:{number}", device=str(number))
    client = api(staff_with_role(roles.VIEWER))
    client.get(LIST)  # the user's permissions are read and cached on the first request

    with django_assert_max_num_queries(6):
        response = client.get(LIST)
    assert response.json()["count"] == 30
