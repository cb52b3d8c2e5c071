"""Restocks racing vends and each other, with real threads and connections (the pattern of
tests/test_concurrency.py): the stock never leaves 0..capacity, nothing deadlocks, and every
unit is explained by the ledger."""

from collections import Counter

import pytest
from django.db.models import Sum
from rest_framework.test import APIClient

from inventory.models import Slot, StockMovement
from tests.factories import UserFactory, staff_with_role
from tests.test_concurrency import race
from vending_site.auth import roles

DEVICE_ID = "ESP32_6CC8404FE03C"
ROUNDS = 6  # operations per thread


@pytest.mark.django_db(transaction=True)
def test_concurrent_restocks_and_vends_keep_stock_within_capacity_and_ledgered(
    online_device, settings
):
    settings.DEVICE_OFFLINE_AFTER = 600  # a loaded runner must not see the machine go offline
    start = dict(Slot.objects.filter(device=online_device).values_list("number", "quantity"))
    staff = staff_with_role(roles.OPERATOR)
    buyers = [UserFactory() for _ in range(4)]
    # One request first: the test client builds its middleware on its first request, and
    # threads doing that at once register django-prometheus' metrics twice (not our race).
    warm = APIClient()
    warm.force_authenticate(staff)
    assert warm.get(f"/api/v1/machines/{DEVICE_ID}/slots").status_code == 200

    def work(i: int) -> list[tuple[str, int, dict]]:
        client = APIClient()
        outcomes = []
        if i < 4:  # restockers, half naming the slots in the other order
            client.force_authenticate(staff)
            loaded = {"1": 2, "2": 1} if i % 2 else {"2": 1, "1": 2}
            for _ in range(ROUNDS):
                response = client.post(
                    f"/api/v1/machines/{DEVICE_ID}/restock", {"loaded": loaded}, format="json"
                )
                outcomes.append(("restock", response.status_code, loaded))
        else:  # buyers of slots 1 and 2
            client.force_authenticate(buyers[i % 4])
            for n in range(ROUNDS):
                slot = 1 + (i + n) % 2
                response = client.post(
                    f"/api/v1/vend/{slot}", {"device_id": DEVICE_ID}, format="json"
                )
                outcomes.append(("vend", response.status_code, {str(slot): -1}))
        return outcomes

    results = [outcome for outcomes in race(10, work) for outcome in outcomes]

    statuses = Counter((kind, status) for kind, status, _ in results)
    assert set(statuses) <= {("restock", 200), ("restock", 422), ("vend", 202), ("vend", 409)}
    assert statuses[("restock", 200)] >= 1
    expected = dict(start)
    for kind, status, change in results:
        if (kind, status) in {("restock", 200), ("vend", 202)}:
            for slot, delta in change.items():
                expected[int(slot)] += delta
    for slot in Slot.objects.filter(device=online_device):
        assert 0 <= slot.quantity <= slot.capacity
        assert slot.quantity == expected[slot.number], slot.number
        ledger = slot.movements.aggregate(total=Sum("delta"))["total"] or 0
        assert start[slot.number] + ledger == slot.quantity
    restocks = StockMovement.objects.filter(reason="restock")
    assert restocks.count() == 2 * statuses[("restock", 200)]
