"""The vend API and the transactions API, over HTTP with DRF's APIClient."""

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from devices.models import Device
from inventory.choices import MovementReason
from inventory.models import Slot, StockMovement
from inventory.services import restock_to_capacity
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory
from transactions.confirmation import confirm_vend
from transactions.delivery import claim_next_command
from transactions.models import IdempotencyKey, Transaction
from transactions.services import request_fingerprint, request_vend

DEVICE_ID = "ESP32_6CC8404FE03C"
DEVICE_MAC = "6C:C8:40:4F:E0:3C"
VEND_URL = "/api/v1/vend/{slot}"


def vend(client, slot=3, body=None, **headers):
    body = {"device_id": DEVICE_ID} if body is None else body
    return client.post(VEND_URL.format(slot=slot), body, format="json", headers=headers)


def stock(device):
    return dict(Slot.objects.filter(device=device).values_list("number", "quantity"))


def assert_nothing_sold(device):
    assert stock(device) == dict.fromkeys(range(1, 6), 5)
    assert not Transaction.objects.exists()
    assert not StockMovement.objects.exists()


# --- Requesting a vend ---------------------------------------------------------------------


def test_vend_on_a_named_device_is_queued_and_answers_202(online_device, user, client_for):
    response = vend(client_for(user))

    assert response.status_code == 202
    body = response.json()
    txn = Transaction.objects.get()
    assert body["id"] == str(txn.pk)
    assert body["state"] == "queued"
    assert body["slot_id"] == 3
    assert body["device_id"] == DEVICE_ID
    assert body["product"] == {"name": "Product 3", "sku": "SKU-3", "price": "1.50"}
    assert body["links"]["self"] == f"/api/v1/transactions/{txn.pk}"
    assert response["Location"] == body["links"]["self"]
    assert txn.requested_by == user
    assert stock(online_device)[3] == 4


def test_legacy_vend_path_behaves_like_the_versioned_one(online_device, user, client_for):
    response = client_for(user).post("/vend/3", {"device_id": DEVICE_ID}, format="json")

    assert response.status_code == 202
    assert response.json()["state"] == "queued"
    assert response.json()["slot_id"] == 3
    assert response["Location"] == response.json()["links"]["self"]
    assert stock(online_device)[3] == 4


def test_vend_without_device_id_goes_to_the_active_device(online_device, user, client_for):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now())

    response = vend(client_for(user), body={})

    assert response.status_code == 202
    assert response.json()["device_id"] == DEVICE_ID


def test_vend_without_device_and_no_active_device_is_refused_with_409(db, user, client_for):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now(), is_active=False)

    response = vend(client_for(user), body={})

    assert response.status_code == 409
    assert response.json()["code"] == "no_active_device"
    assert not Transaction.objects.exists()


# --- Refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slot", "code", "message"),
    [
        ("abc", "invalid", "Slot id 'abc' is not a whole number."),
        ("0", "invalid", "Slot id 0 is out of range; slots are numbered from 1."),
        ("-1", "invalid", "Slot id -1 is out of range; slots are numbered from 1."),
        ("6", "slot_out_of_range", f"Slot 6 does not exist on {DEVICE_ID}; it has slots 1 to 5."),
    ],
)
def test_vend_on_an_invalid_slot_is_refused_with_400(
    online_device, user, client_for, slot, code, message
):
    response = vend(client_for(user), slot=slot)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["detail"] == message
    assert_nothing_sold(online_device)


def test_vend_with_an_unknown_body_field_is_refused_naming_the_field(
    online_device, user, client_for
):
    response = vend(client_for(user), body={"device_id": DEVICE_ID, "colour": "red"})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert "colour" in body["detail"]
    assert "colour" in body["errors"]
    assert_nothing_sold(online_device)


def test_vend_with_a_json_list_body_is_refused_with_400(online_device, user, client_for):
    response = vend(client_for(user), body=[{"device_id": DEVICE_ID}])

    assert response.status_code == 400
    assert response.json()["detail"] == "The body must be a JSON object (it may be empty: {})."
    assert_nothing_sold(online_device)


def test_vend_with_malformed_json_is_refused_with_400(online_device, user, client_for):
    response = client_for(user).post(
        VEND_URL.format(slot=3), '{"device_id": ', content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert_nothing_sold(online_device)


@pytest.mark.parametrize("wait", [settings.VEND_MAX_WAIT + 1, -1])
def test_vend_with_a_wait_out_of_range_is_refused_with_400(online_device, user, client_for, wait):
    response = vend(client_for(user), body={"device_id": DEVICE_ID, "wait": wait})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "wait" in response.json()["errors"]
    assert_nothing_sold(online_device)


def test_vend_with_nul_bytes_in_the_device_id_is_refused_with_400(online_device, user, client_for):
    response = vend(client_for(user), body={"device_id": "ESP32_6CC8\x00404FE03C"})

    assert response.status_code == 400
    assert "device_id" in response.json()["errors"]
    assert_nothing_sold(online_device)


def test_vend_on_an_unknown_device_is_refused_with_404(online_device, user, client_for):
    response = vend(client_for(user), body={"device_id": "ESP32_000000000001"})

    assert response.status_code == 404
    assert response.json()["code"] == "unknown_device"
    assert response.json()["device_id"] == "ESP32_000000000001"
    assert_nothing_sold(online_device)


def _go_offline(device):
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now() - timedelta(minutes=5))


def _empty_slot_3(device):
    Slot.objects.filter(device=device, number=3).update(quantity=0)


def _disable_slot_3(device):
    Slot.objects.filter(device=device, number=3).update(enabled=False)


def _unassign_slot_3(device):
    Slot.objects.filter(device=device, number=3).update(product=None)


@pytest.mark.parametrize(
    ("breakage", "code"),
    [
        (_go_offline, "device_offline"),
        (_empty_slot_3, "out_of_stock"),
        (_disable_slot_3, "slot_disabled"),
        (_unassign_slot_3, "slot_not_configured"),
    ],
)
def test_vend_the_machine_cannot_serve_is_refused_with_409(
    online_device, user, client_for, breakage, code
):
    breakage(online_device)
    before = stock(online_device)

    response = vend(client_for(user))

    assert response.status_code == 409
    assert response.json()["code"] == code
    assert response.json()["detail"]
    assert stock(online_device) == before
    assert not Transaction.objects.exists()
    assert not StockMovement.objects.exists()


# --- Authentication -------------------------------------------------------------------------


def test_anonymous_vend_is_refused_with_401(online_device, api_client):
    response = vend(api_client)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert_nothing_sold(online_device)


def test_a_jwt_from_the_token_endpoint_authenticates_a_vend(online_device, api_client):
    user = UserFactory()
    token = api_client.post(
        "/api/v1/auth/token/",
        {"username": user.username, "password": "pw-for-tests-1"},
        format="json",
    )
    assert token.status_code == 200

    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.json()['access']}")
    response = vend(api_client)

    assert response.status_code == 202
    assert Transaction.objects.get().requested_by == user


def test_a_wrong_password_gets_no_token(db, api_client):
    user = UserFactory()

    response = api_client.post(
        "/api/v1/auth/token/", {"username": user.username, "password": "nope"}, format="json"
    )

    assert response.status_code == 401


def test_selecting_the_active_device_needs_staff(online_device, user, staff, client_for):
    other = DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now())

    refused = client_for(user).post(
        "/esp32/devices/select", {"device_id": other.device_id}, format="json"
    )
    assert refused.status_code == 403
    assert Device.objects.get(is_active=True) == online_device

    accepted = client_for(staff).post(
        "/esp32/devices/select", {"device_id": "aa:aa:aa:aa:aa:aa"}, format="json"
    )
    assert accepted.status_code == 200
    assert accepted.json() == {"status": "selected", "active_device": other.device_id}
    assert Device.objects.get(is_active=True) == other


def test_selecting_an_unknown_device_answers_404(online_device, staff, client_for):
    response = client_for(staff).post(
        "/esp32/devices/select", {"device_id": "ESP32_000000000001"}, format="json"
    )

    assert response.status_code == 404
    assert response.json()["code"] == "unknown_device"
    assert Device.objects.get(is_active=True) == online_device


# --- Idempotency-Key ------------------------------------------------------------------------


def test_a_retried_idempotent_vend_replays_the_first_answer(online_device, user, client_for):
    client = client_for(user)

    first = vend(client, **{"Idempotency-Key": "order-1"})
    second = vend(client, **{"Idempotency-Key": "order-1"})

    assert first.status_code == second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Transaction.objects.count() == 1
    assert stock(online_device)[3] == 4
    assert StockMovement.objects.filter(reason=MovementReason.VEND).count() == 1


def test_reusing_an_idempotency_key_for_another_request_is_refused_with_422(
    online_device, user, client_for
):
    client = client_for(user)
    vend(client, slot=3, **{"Idempotency-Key": "order-1"})

    response = vend(client, slot=4, **{"Idempotency-Key": "order-1"})

    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_mismatch"
    assert Transaction.objects.count() == 1
    assert stock(online_device)[4] == 5


def test_idempotency_keys_are_scoped_per_user(online_device, client_for):
    first = vend(client_for(UserFactory()), **{"Idempotency-Key": "order-1"})
    second = vend(client_for(UserFactory()), **{"Idempotency-Key": "order-1"})

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert Transaction.objects.count() == 2
    assert stock(online_device)[3] == 3


def test_a_refused_vend_releases_its_idempotency_key(online_device, user, client_for):
    client = client_for(user)
    _empty_slot_3(online_device)

    refused = vend(client, **{"Idempotency-Key": "order-1"})
    assert refused.status_code == 409
    assert refused.json()["code"] == "out_of_stock"
    assert not IdempotencyKey.objects.exists()

    restock_to_capacity(slot=Slot.objects.get(device=online_device, number=3))
    retried = vend(client, **{"Idempotency-Key": "order-1"})

    assert retried.status_code == 202
    assert "Idempotent-Replayed" not in retried
    assert IdempotencyKey.objects.get().transaction_id == uuid.UUID(retried.json()["id"])
    assert stock(online_device)[3] == 9


def _key_in_progress(user, *, locked_at):
    return IdempotencyKey.objects.create(
        user=user,
        key="order-1",
        fingerprint=request_fingerprint(
            method="POST", path="vend/3", body={"device_id": DEVICE_ID}
        ),
        locked_at=locked_at,
    )


def test_a_key_still_in_progress_is_refused_with_409(online_device, user, client_for):
    _key_in_progress(user, locked_at=timezone.now())

    response = vend(client_for(user), **{"Idempotency-Key": "order-1"})

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_use"
    assert_nothing_sold(online_device)
    assert IdempotencyKey.objects.get().in_progress


def test_a_key_abandoned_in_progress_is_taken_over(online_device, user, client_for):
    stale = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT + 5)
    _key_in_progress(user, locked_at=stale)

    response = vend(client_for(user), **{"Idempotency-Key": "order-1"})

    assert response.status_code == 202
    key = IdempotencyKey.objects.get()
    assert key.transaction_id == uuid.UUID(response.json()["id"])
    assert key.locked_at > stale
    assert stock(online_device)[3] == 4


# --- Waiting for the outcome ----------------------------------------------------------------


def _confirm_when_delivered(errors: list, delay: float = 0.3, deadline: float = 5.0):
    """Play the machine: after ``delay``, take the vend and report it dispensed."""
    try:
        time.sleep(delay)
        device = Device.objects.get(device_id=DEVICE_ID)
        give_up = time.monotonic() + deadline
        while claim_next_command(device=device) is None:
            if time.monotonic() > give_up:
                raise AssertionError("no vend was queued")
            time.sleep(0.05)
        # From the machine's own address, as its firmware's confirmation comes.
        if confirm_vend(raw_id=DEVICE_MAC, slot=3, success=True, remote_addr="127.0.0.1") is None:
            raise AssertionError("the confirmation matched no vend")
    except Exception as exc:  # noqa: BLE001 - reported by the test below
        errors.append(exc)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_vend_with_wait_answers_200_once_the_machine_confirms(online_device, user, client_for):
    errors: list = []
    machine = threading.Thread(target=_confirm_when_delivered, args=(errors,))
    machine.start()
    try:
        response = vend(client_for(user), body={"device_id": DEVICE_ID, "wait": 5})
    finally:
        machine.join(timeout=10)

    assert not machine.is_alive()
    assert errors == []
    assert response.status_code == 200
    assert response.json()["state"] == "succeeded"
    assert response.json()["completed_at"] is not None
    assert Transaction.objects.get().state == "succeeded"


def test_a_vend_with_wait_answers_202_when_nothing_settles_in_time(online_device, user, client_for):
    started = time.monotonic()
    response = vend(client_for(user), body={"device_id": DEVICE_ID, "wait": 0.3})

    assert response.status_code == 202
    assert response.json()["state"] == "queued"
    assert time.monotonic() - started >= 0.3  # the wait was honoured (a load cannot shorten it)


# --- Listing and reading transactions ---------------------------------------------------------


def _sell(device, slot_number, user, *, at=None):
    txn = request_vend(device=device, slot_number=slot_number, user=user)
    if at is not None:
        Transaction.objects.filter(pk=txn.pk).update(created_at=at)
    return txn


def ids(response):
    return [row["id"] for row in response.json()["results"]]


def test_transactions_are_listed_newest_first_and_paginated(online_device, user, client_for):
    now = timezone.now()
    sold = [_sell(online_device, n, user, at=now - timedelta(minutes=10 - n)) for n in (1, 2, 3)]
    client = client_for(user)

    everything = client.get("/api/v1/transactions/")
    assert everything.status_code == 200
    assert everything.json()["count"] == 3
    assert ids(everything) == [str(t.pk) for t in reversed(sold)]

    page = client.get("/api/v1/transactions", {"limit": 1, "offset": 1})
    assert page.json()["count"] == 3
    assert ids(page) == [str(sold[1].pk)]
    assert page.json()["next"] is not None
    assert page.json()["previous"] is not None


def test_transactions_filter_by_state_repeated(online_device, user, client_for):
    sent = _sell(online_device, 1, user)
    queued = _sell(online_device, 2, user)
    cancelled = _sell(online_device, 3, user)
    assert claim_next_command(device=online_device).transaction_id == sent.pk  # oldest first
    client = client_for(user)
    client.post(f"/api/v1/transactions/{cancelled.pk}/cancel")

    only_sent = client.get("/api/v1/transactions/", {"state": "sent"})
    both = client.get("/api/v1/transactions/?state=queued&state=cancelled")

    assert ids(only_sent) == [str(sent.pk)]
    assert set(ids(both)) == {str(queued.pk), str(cancelled.pk)}


def test_transactions_filter_by_device_in_any_spelling_and_by_slot(online_device, user, client_for):
    other = DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now())
    SlotFactory(device=other, number=3, product=ProductFactory(sku="SKU-OTHER"))
    mine = [_sell(online_device, 3, user), _sell(online_device, 4, user)]
    _sell(other, 3, user)
    client = client_for(user)

    by_mac = client.get("/api/v1/transactions/", {"device": DEVICE_MAC})
    by_lower = client.get("/api/v1/transactions/", {"device": DEVICE_ID.lower()})
    by_slot = client.get("/api/v1/transactions/", {"device": DEVICE_ID, "slot": 4})
    by_nonsense = client.get("/api/v1/transactions/", {"device": "no such device!"})

    assert set(ids(by_mac)) == {str(t.pk) for t in mine}
    assert set(ids(by_lower)) == {str(t.pk) for t in mine}
    assert ids(by_slot) == [str(mine[1].pk)]
    assert by_nonsense.status_code == 200
    assert ids(by_nonsense) == []


def test_transactions_filter_by_creation_time(online_device, user, client_for):
    now = timezone.now()
    old = _sell(online_device, 1, user, at=now - timedelta(days=2))
    recent = _sell(online_device, 2, user, at=now - timedelta(hours=1))
    client = client_for(user)
    yesterday = (now - timedelta(days=1)).isoformat()

    after = client.get("/api/v1/transactions/", {"created_after": yesterday})
    before = client.get("/api/v1/transactions/", {"created_before": yesterday})

    assert ids(after) == [str(recent.pk)]
    assert ids(before) == [str(old.pk)]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"state": "bogus"}, "state"), ({"created_after": "notadate"}, "created_after")],
)
def test_an_invalid_transaction_filter_is_refused_with_400(
    online_device, user, client_for, params, field
):
    response = client_for(user).get("/api/v1/transactions/", params)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "moment",
    [
        "0360-12-30T23:16:28-22:52",  # found by schemathesis: PostgreSQL takes offsets to ±15:59
        "2026-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    ],
)
def test_a_creation_time_with_any_valid_iso_offset_filters_or_is_refused_never_500(
    online_device, staff, client_for, moment
):
    for name in ("created_after", "created_before"):
        response = client_for(staff).get("/api/v1/transactions/", {name: moment})
        assert response.status_code in (200, 400), (name, moment, response.status_code)
        if response.status_code == 400:
            assert name in response.json()["errors"]


def test_a_creation_time_with_a_large_offset_is_compared_in_utc(online_device, user, client_for):
    sold = _sell(online_device, 1, user, at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    client = client_for(user)
    # 2026-01-02T10:59+23:00 is 2026-01-01T11:59 UTC, a minute before the sale.
    just_before = {"created_after": "2026-01-02T10:59:00+23:00"}
    just_after = {"created_after": "2026-01-02T11:01:00+23:00"}
    assert ids(client.get("/api/v1/transactions/", just_before)) == [str(sold.pk)]
    assert ids(client.get("/api/v1/transactions/", just_after)) == []


def test_clients_see_only_their_own_transactions_and_staff_see_all(
    online_device, user, staff, client_for
):
    mine = _sell(online_device, 1, user)
    theirs = _sell(online_device, 2, UserFactory())

    as_user = client_for(user)
    assert ids(as_user.get("/api/v1/transactions/")) == [str(mine.pk)]
    assert as_user.get(f"/api/v1/transactions/{theirs.pk}").status_code == 404
    assert as_user.post(f"/api/v1/transactions/{theirs.pk}/cancel").status_code == 404
    assert set(ids(client_for(staff).get("/api/v1/transactions/"))) == {
        str(mine.pk),
        str(theirs.pk),
    }


def test_transaction_detail_includes_its_events(online_device, user, client_for):
    txn = _sell(online_device, 3, user)
    claim_next_command(device=online_device)

    response = client_for(user).get(f"/api/v1/transactions/{txn.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(txn.pk)
    assert body["state"] == "sent"
    assert [(e["from_state"], e["to_state"]) for e in body["events"]] == [
        ("", "queued"),
        ("queued", "sent"),
    ]


@pytest.mark.parametrize("pk", [str(uuid.uuid4()), "-" * 36], ids=["unknown", "malformed"])
def test_an_unknown_transaction_answers_404(online_device, user, client_for, pk):
    client = client_for(user)

    for response in (
        client.get(f"/api/v1/transactions/{pk}"),
        client.post(f"/api/v1/transactions/{pk}/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_cancelling_a_queued_vend_returns_the_unit(online_device, user, client_for):
    txn = _sell(online_device, 3, user)
    assert stock(online_device)[3] == 4

    response = client_for(user).post(f"/api/v1/transactions/{txn.pk}/cancel")

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert stock(online_device)[3] == 5
    assert list(
        StockMovement.objects.filter(transaction=txn).order_by("id").values_list("delta", "reason")
    ) == [(-1, "vend"), (1, "refund")]


def test_cancelling_a_vend_already_sent_is_refused_with_409(online_device, user, client_for):
    txn = _sell(online_device, 3, user)
    claim_next_command(device=online_device)

    response = client_for(user).post(f"/api/v1/transactions/{txn.pk}/cancel")

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert response.json()["state"] == "sent"
    txn.refresh_from_db()
    assert txn.state == "sent"
    assert stock(online_device)[3] == 4


def test_the_transaction_list_makes_the_same_queries_for_3_or_30_rows(
    online_device, staff, client_for, django_assert_max_num_queries
):
    Slot.objects.filter(device=online_device).update(quantity=10)
    client = client_for(staff)
    users = [UserFactory() for _ in range(3)]
    for i in range(3):
        _sell(online_device, i % 5 + 1, users[i % 3])

    # The count and the page (a read never sweeps: the sweeper does).
    with django_assert_max_num_queries(2) as few:
        assert client.get("/api/v1/transactions/").json()["count"] == 3
    for i in range(27):
        _sell(online_device, i % 5 + 1, users[i % 3])
    with django_assert_max_num_queries(2) as many:
        assert len(client.get("/api/v1/transactions/").json()["results"]) == 30

    assert len(many.captured_queries) == len(few.captured_queries)
