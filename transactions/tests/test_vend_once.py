"""request_vend_once: the one service that vends at most once per Idempotency-Key."""

import pytest

from devices.exceptions import UnknownDevice
from transactions.exceptions import IdempotencyKeyMismatch
from transactions.models import IdempotencyKey, Transaction
from transactions.services import request_vend_once

pytestmark = pytest.mark.django_db


def stock(device, number: int) -> int:
    return device.slots.get(number=number).quantity


def test_a_key_used_again_for_the_same_vend_gives_the_first_vend_back(online_device, user):
    asked = {"device_id": online_device.device_id}
    vend = dict(user=user, slot_number=3, idempotency_key="order-1", asked=asked)

    first = request_vend_once(device_id=online_device.device_id, **vend)
    again = request_vend_once(device_id=online_device.device_id, **vend)

    assert (first.status, first.replayed) == (202, False)
    assert (again.status, again.replayed) == (202, True)
    assert again.transaction.pk == first.transaction.pk
    assert Transaction.objects.count() == 1
    assert stock(online_device, 3) == 4


def test_without_a_device_id_the_active_device_vends(online_device, user):
    outcome = request_vend_once(user=user, slot_number=2)

    assert outcome.transaction.device_id == online_device.pk
    assert not IdempotencyKey.objects.exists()


def test_a_key_for_an_unknown_device_is_released_for_a_retry(online_device, user):
    with pytest.raises(UnknownDevice):
        request_vend_once(
            user=user,
            slot_number=3,
            device_id="ESP32_000000000000",
            idempotency_key="order-1",
            asked={"device_id": "ESP32_000000000000"},
        )

    assert not IdempotencyKey.objects.exists()
    assert not Transaction.objects.exists()


def test_a_key_used_for_another_vend_is_refused_and_sells_nothing(online_device, user):
    request_vend_once(user=user, slot_number=3, idempotency_key="order-1")

    with pytest.raises(IdempotencyKeyMismatch):
        request_vend_once(user=user, slot_number=4, idempotency_key="order-1")

    assert Transaction.objects.count() == 1
    assert stock(online_device, 4) == 5
