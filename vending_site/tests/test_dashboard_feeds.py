"""The dashboard's feeds filtered on the server, and settling unconfirmed vends from the page."""

import json

import pytest
from django.test import Client

from devices.choices import Direction, Transport
from devices.models import CommunicationLog
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory
from transactions.choices import TransactionState
from transactions.lifecycle import transition
from transactions.models import Transaction
from transactions.services import request_vend
from vending_site.models import LiveEvent

pytestmark = pytest.mark.django_db

TXNS_URL = "/dashboard/api/transactions"
LOGS_URL = "/dashboard/api/logs"
RESOLVE_URL = "/dashboard/api/transactions/resolve"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_json(client: Client, url: str, data: dict):
    return client.post(url, data=json.dumps(data), content_type="application/json")


def log_line(device_key: str, message: str) -> CommunicationLog:
    return CommunicationLog.objects.create(
        direction=Direction.IN, transport=Transport.WIFI, device_key=device_key, message=message
    )


def unconfirmed_vend(device, user) -> Transaction:
    txn = request_vend(device=device, slot_number=1, user=user)
    transition(txn, TransactionState.SENT)
    return transition(txn, TransactionState.UNCONFIRMED)


@pytest.fixture
def quiet_device(db):
    from django.utils import timezone

    device = DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now())
    SlotFactory(device=device, number=1, product=ProductFactory(sku="Q-1"), quantity=5)
    return device


# --- Server-side filter ---------------------------------------------------------------------


def test_the_log_feed_of_one_machine_finds_its_rows_behind_many_of_another(
    staff, online_device, quiet_device
):
    log_line(quiet_device.device_id, "the quiet one spoke")
    for n in range(60):
        log_line(online_device.device_id, f"busy {n}")

    body = logged_in(staff).get(LOGS_URL, {"device": quiet_device.device_id}).json()

    assert [entry["message"] for entry in body["logs"]] == ["the quiet one spoke"]
    assert body["device"] == quiet_device.device_id


def test_the_transaction_feed_of_one_machine_holds_only_its_vends_newest_first(
    staff, online_device, quiet_device
):
    Slot = online_device.slots.model
    Slot.objects.filter(device=online_device).update(quantity=10)
    for n in range(5):
        request_vend(device=online_device, slot_number=n + 1, user=staff)
    mine = [request_vend(device=quiet_device, slot_number=1, user=staff) for _ in range(2)]

    body = logged_in(staff).get(TXNS_URL, {"device": quiet_device.device_id}).json()

    assert [t["id"] for t in body["transactions"]] == [str(mine[1].pk), str(mine[0].pk)]
    assert {t["device_id"] for t in body["transactions"]} == {quiet_device.device_id}


def test_a_feed_without_a_device_holds_every_machine_capped_at_the_limit(
    staff, online_device, quiet_device
):
    for n in range(8):
        log_line(online_device.device_id if n % 2 else quiet_device.device_id, f"line {n}")

    body = logged_in(staff).get(LOGS_URL, {"limit": 3}).json()

    assert [entry["message"] for entry in body["logs"]] == ["line 7", "line 6", "line 5"]
    assert body["limit"] == 3


@pytest.mark.parametrize("limit", ["0", "201", "many", "-1"])
def test_a_feed_limit_out_of_bounds_is_refused_with_400(staff, limit):
    response = logged_in(staff).get(LOGS_URL, {"limit": limit})

    assert response.status_code == 400
    assert "limit" in response.json()["detail"]


def test_a_feed_of_an_unknown_machine_is_refused_with_404(staff):
    response = logged_in(staff).get(TXNS_URL, {"device": "ESP32_000000000099"})

    assert response.status_code == 404
    assert "No device" in response.json()["detail"]


def test_the_feeds_are_private_unless_the_dashboard_is_public(client, settings, online_device):
    settings.DASHBOARD_PUBLIC = False
    assert client.get(LOGS_URL).status_code == 403

    settings.DASHBOARD_PUBLIC = True
    assert client.get(LOGS_URL).status_code == 200


# --- Settling unconfirmed vends ---------------------------------------------------------------


def test_staff_mark_an_unconfirmed_vend_not_dispensed_and_it_is_refunded(staff, online_device):
    txn = unconfirmed_vend(online_device, staff)
    before = online_device.slots.get(number=1).quantity
    last_event = LiveEvent.objects.order_by("-id").first().pk

    response = post_json(
        logged_in(staff), RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": False}
    )

    assert response.status_code == 200, response.content
    assert response.json()["state"] == TransactionState.FAILED
    assert online_device.slots.get(number=1).quantity == before + 1
    published = LiveEvent.objects.filter(id__gt=last_event, kind="transaction").get()
    assert published.payload["state"] == TransactionState.FAILED


def test_staff_mark_an_unconfirmed_vend_dispensed_and_the_sale_stands(staff, online_device):
    txn = unconfirmed_vend(online_device, staff)

    response = post_json(
        logged_in(staff), RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": True}
    )

    assert response.status_code == 200
    txn.refresh_from_db()
    assert txn.state == TransactionState.SUCCEEDED


def test_settling_a_vend_twice_answers_409_with_the_services_message(staff, online_device):
    txn = unconfirmed_vend(online_device, staff)
    client = logged_in(staff)
    post_json(client, RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": True})

    response = post_json(client, RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": False})

    assert response.status_code == 409
    assert "only unconfirmed vends are resolved" in response.json()["detail"]
    txn.refresh_from_db()
    assert txn.state == TransactionState.SUCCEEDED


def test_settling_an_unknown_transaction_is_refused_with_404(staff):
    response = post_json(
        logged_in(staff),
        RESOLVE_URL,
        {"transaction_id": "00000000-0000-0000-0000-000000000000", "dispensed": True},
    )

    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [{}, {"transaction_id": "nope", "dispensed": True}, {"transaction_id": None}],
)
def test_a_malformed_settle_request_is_refused_with_400(staff, body):
    response = post_json(logged_in(staff), RESOLVE_URL, body)

    assert response.status_code == 400
    assert response.json()["detail"]


def test_settling_is_refused_to_anonymous_visitors_of_a_public_dashboard(
    client, settings, staff, online_device
):
    settings.DASHBOARD_PUBLIC = True
    txn = unconfirmed_vend(online_device, staff)

    response = post_json(client, RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": True})

    assert response.status_code == 403
    assert response.json()["detail"]
    txn.refresh_from_db()
    assert txn.state == TransactionState.UNCONFIRMED


def test_settling_is_refused_to_a_user_who_is_not_staff(staff, online_device):
    txn = unconfirmed_vend(online_device, staff)

    response = post_json(
        logged_in(UserFactory()), RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": True}
    )

    assert response.status_code == 403


def test_settling_needs_the_sessions_csrf_token(staff, online_device):
    txn = unconfirmed_vend(online_device, staff)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)

    response = post_json(client, RESOLVE_URL, {"transaction_id": str(txn.pk), "dispensed": True})

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    txn.refresh_from_db()
    assert txn.state == TransactionState.UNCONFIRMED
