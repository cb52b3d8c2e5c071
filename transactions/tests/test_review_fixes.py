"""Defects found in review, pinned so they stay fixed."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from devices.models import Command, Device
from transactions.choices import TransactionState
from transactions.delivery import claim_next_command
from transactions.exceptions import IdempotencyKeyInUse
from transactions.models import IdempotencyKey, Transaction
from transactions.services import (
    _request_vend_binding_key,
    claim_idempotency_key,
    request_fingerprint,
    request_vend,
    sweep,
)

pytestmark = pytest.mark.django_db


def test_a_head_request_on_the_poll_never_takes_a_command(online_device, api_client):
    request_vend(device=online_device, slot_number=1)

    head = api_client.head("/esp32/commands/ESP32_6CC8404FE03C")
    documented = api_client.head("/esp32/wifi/command", HTTP_DEVICE_ID="ESP32_6CC8404FE03C")

    assert head.status_code == documented.status_code == 405
    assert Command.objects.get().state == "queued"
    assert api_client.get("/esp32/commands/ESP32_6CC8404FE03C").json()["slot"] == 1


def test_a_poll_from_something_that_is_not_firmware_registers_nothing(api_client):
    response = api_client.get("/esp32/commands/favicon.ico")

    assert response.status_code == 404
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    "path", ["/esp32/register", "/esp32/confirm", "/esp32/wifi/confirm", "/api/v1/vend/1"]
)
def test_a_lone_surrogate_in_a_body_is_a_400_not_a_crash(online_device, staff, client_for, path):
    body = '{"device_id": "6C:C8:40:4F:E0:3C", "slot": 1, "\\ud800": 1}'

    response = client_for(staff).post(path, body, content_type="application/json")

    assert response.status_code == 400
    assert "not valid Unicode" in response.json()["detail"]


@pytest.mark.parametrize("query", ["limit=999999999999999999999", "offset=999999999999999999999"])
def test_huge_pagination_numbers_are_bounded(online_device, staff, client_for, query):
    request_vend(device=online_device, slot_number=1)

    response = client_for(staff).get(f"/api/v1/transactions/?{query}")

    assert response.status_code == 200


def test_a_list_never_returns_more_than_500_rows(online_device, staff, client_for):
    slot = online_device.slots.get(number=1)
    Transaction.objects.bulk_create(
        Transaction(
            device=online_device,
            slot=slot,
            slot_number=1,
            product_name="p",
            product_sku="s",
            price=1,
            state=TransactionState.SUCCEEDED,
        )
        for _ in range(501)
    )

    body = client_for(staff).get("/api/v1/transactions/?limit=100000").json()

    assert body["count"] == 501
    assert len(body["results"]) == 500
    assert "limit=500" in body["next"]


def test_a_bad_token_gets_a_readable_message(api_client):
    response = api_client.get("/api/v1/transactions/", HTTP_AUTHORIZATION="Bearer not-a-token")

    assert response.status_code == 401
    assert response.json()["detail"] == "Given token not valid for any token type"


def test_a_slow_request_whose_key_was_taken_over_vends_nothing(online_device, user):
    fingerprint = request_fingerprint(method="POST", path="vend/1", body={})
    slow = claim_idempotency_key(user=user, key="k", fingerprint=fingerprint)
    IdempotencyKey.objects.filter(pk=slow.pk).update(locked_at=timezone.now() - timedelta(hours=1))
    slow.locked_at = IdempotencyKey.objects.get(pk=slow.pk).locked_at
    retry = claim_idempotency_key(user=user, key="k", fingerprint=fingerprint)
    assert retry.pk == slow.pk and retry.locked_at != slow.locked_at

    with pytest.raises(IdempotencyKeyInUse):
        _request_vend_binding_key(
            device=online_device, slot_number=1, user=user, key=slow, status=202
        )

    assert not Transaction.objects.exists()
    assert online_device.slots.get(number=1).quantity == 5
    assert IdempotencyKey.objects.filter(pk=retry.pk).exists()  # the retry still holds it
    _request_vend_binding_key(device=online_device, slot_number=1, user=user, key=retry, status=202)
    assert Transaction.objects.count() == 1


def test_the_admin_list_never_writes_and_shows_a_stuck_vend_unconfirmed_once_swept(
    online_device, staff, client
):
    txn = request_vend(device=online_device, slot_number=2)
    claim_next_command(device=online_device)
    Transaction.objects.filter(pk=txn.pk).update(sent_at=timezone.now() - timedelta(minutes=10))
    client.force_login(staff)
    changelist = reverse("admin:transactions_transaction_changelist")

    before = client.get(changelist)

    assert before.status_code == 200
    assert Transaction.objects.get(pk=txn.pk).state == TransactionState.SENT  # reads never move it

    sweep()  # what the sweeper process does every few seconds
    response = client.get(changelist)

    assert response.status_code == 200
    assert Transaction.objects.get(pk=txn.pk).state == TransactionState.UNCONFIRMED
    assert (
        '<span class="txn-state txn-state--unconfirmed">Unconfirmed (needs staff)</span>'
        in response.content.decode()
    )


def test_sweep_commands_once_reports_what_it_did(online_device):
    request_vend(device=online_device, slot_number=3)
    Command.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    out = StringIO()

    call_command("sweep_commands", stdout=out)

    assert out.getvalue().strip() == "expired 1, unconfirmed 0"
