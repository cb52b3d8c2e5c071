"""Vend rules that come from the firmware's limits and from hostile bodies."""

import pytest

from devices.choices import Protocol
from devices.models import Device
from transactions.models import Transaction

pytestmark = pytest.mark.django_db


def test_a_v21_device_is_never_sent_a_slot_its_firmware_ignores(online_device, staff, client_for):
    Device.objects.filter(pk=online_device.pk).update(slot_count=6)

    response = client_for(staff).post("/api/v1/vend/6", {}, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "slot_out_of_range"
    assert "slots 1 to 5" in response.json()["detail"]
    assert not Transaction.objects.exists()


def test_the_documented_variant_may_use_every_slot_the_machine_has(
    online_device, staff, client_for
):
    Device.objects.filter(pk=online_device.pk).update(
        slot_count=6, protocol=Protocol.WIFI_DOCUMENTED
    )

    response = client_for(staff).post("/api/v1/vend/6", {}, format="json")

    # Past the firmware check: slot 6 has no row yet, so it is refused as not set up.
    assert response.status_code == 409
    assert response.json()["code"] == "slot_not_configured"


def test_json_nested_too_deeply_is_a_400_not_a_crash(online_device, staff, client_for):
    body = "[" * 30_000 + "]" * 30_000  # deep, yet under MAX_REQUEST_BODY

    response = client_for(staff).post("/api/v1/vend/1", body, content_type="application/json")

    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]


@pytest.mark.parametrize("slot_id", [" 3", "+3", "1_0", "\u0663", "3.0", "0x3"])
def test_slot_ids_are_plain_ascii_digits(online_device, staff, client_for, slot_id):
    response = client_for(staff).post(f"/api/v1/vend/{slot_id}", {}, format="json")

    assert response.status_code in (400, 404)
    assert not Transaction.objects.exists()


def test_wait_must_be_a_number_not_a_boolean(online_device, staff, client_for):
    response = client_for(staff).post("/api/v1/vend/1", {"wait": True}, format="json")

    assert response.status_code == 400
    assert "wait" in response.json()["errors"]


def test_a_replayed_vend_points_to_its_transaction_like_the_first_answer(
    online_device, staff, client_for
):
    client = client_for(staff)
    first = client.post("/api/v1/vend/1", {}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client.post("/api/v1/vend/1", {}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert again["Idempotent-Replayed"] == "true"
    assert again["Location"] == first["Location"]


def test_a_retry_may_change_how_long_it_waits_without_vending_again(
    online_device, staff, client_for
):
    client = client_for(staff)
    first = client.post("/api/v1/vend/1", {"wait": 0}, format="json", HTTP_IDEMPOTENCY_KEY="k-wait")
    again = client.post(
        "/api/v1/vend/1", {"wait": 0.1}, format="json", HTTP_IDEMPOTENCY_KEY="k-wait"
    )

    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert Transaction.objects.count() == 1
