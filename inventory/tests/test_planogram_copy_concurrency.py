"""Planogram copies racing restocks and each other onto the same machine, with real threads
and connections (the pattern of tests/test_concurrency.py): no deadlock, no 5xx, the stock
never above the capacity a copy set, and every unit explained by the ledger. Meant for
PostgreSQL, where the row locks are real; SQLite serialises the writers."""

from collections import Counter
from decimal import Decimal
from itertools import pairwise

import pytest
from django.db.models import Sum
from rest_framework.test import APIClient

from inventory.models import PriceChange, Slot
from tests.factories import DeviceFactory, SlotFactory, UserFactory, staff_with_role
from tests.test_concurrency import race
from vending_site.auth import roles

TARGET = "ESP32_6CC8404FE03C"  # online_device: five slots, 5 of 10 units each
SOURCES = ("ESP32_0000000000A7", "ESP32_0000000000A8")
ROUNDS = 5


@pytest.mark.django_db(transaction=True)
def test_copies_racing_restocks_never_pass_capacity_and_the_ledger_adds_up(online_device):
    # The sources stock what the target's slots hold: a copy never relabels units. The second
    # source keeps the target's capacity (10), which no restock can pass, so its copies always
    # land whatever the order; the first's (7) is refused once the restocks passed 7.
    held = {s.number: s.product for s in Slot.objects.filter(device=online_device)}
    for device_id, capacity, price in zip(SOURCES, (7, 10), ("2.00", "2.50"), strict=True):
        source = DeviceFactory(device_id=device_id, slot_count=2)
        for number in (1, 2):
            SlotFactory(
                device=source,
                number=number,
                product=held[number],
                quantity=0,
                capacity=capacity,
                price=Decimal(price),
            )
    start = dict(Slot.objects.filter(device=online_device).values_list("number", "quantity"))
    operator = staff_with_role(roles.OPERATOR)
    staff = UserFactory(is_staff=True, is_superuser=True)
    warm = APIClient()
    warm.force_authenticate(staff)
    assert warm.get(f"/api/v1/machines/{TARGET}/slots").status_code == 200

    def work(i: int) -> list[tuple[str, int, dict]]:
        client = APIClient()
        outcomes = []
        if i < 2:  # copiers, each from its own source, onto the target
            client.force_authenticate(operator)
            for _ in range(ROUNDS):
                response = client.post(
                    f"/api/v1/machines/{SOURCES[i]}/planogram/copy", {"to": [TARGET]}, format="json"
                )
                outcomes.append(("copy", response.status_code, {}))
        else:  # restockers of slots 1 and 2
            client.force_authenticate(staff)
            loaded = {"1": 1, "2": 1} if i % 2 else {"2": 1, "1": 1}
            for _ in range(ROUNDS):
                response = client.post(
                    f"/api/v1/machines/{TARGET}/restock", {"loaded": loaded}, format="json"
                )
                outcomes.append(("restock", response.status_code, loaded))
        return outcomes

    results = [outcome for outcomes in race(4, work) for outcome in outcomes]

    statuses = Counter((kind, status) for kind, status, _ in results)
    assert set(statuses) <= {("copy", 200), ("copy", 422), ("restock", 200), ("restock", 422)}
    assert statuses[("copy", 200)] >= 1
    expected = dict(start)
    for kind, status, change in results:
        if (kind, status) == ("restock", 200):
            for slot, delta in change.items():
                expected[int(slot)] += delta
    for slot in Slot.objects.filter(device=online_device):
        assert 0 <= slot.quantity <= slot.capacity, slot.number
        assert slot.quantity == expected[slot.number], slot.number
        ledger = slot.movements.aggregate(total=Sum("delta"))["total"] or 0
        assert start[slot.number] + ledger == slot.quantity
        if slot.number in (1, 2):
            # The last copy that won set both the capacity and the price, from one source.
            assert (slot.capacity, slot.price) in {(7, Decimal("2.00")), (10, Decimal("2.50"))}
            changes = list(PriceChange.objects.filter(slot=slot).order_by("id"))
            assert changes[-1].new_price == slot.price
            for before, after in pairwise(changes):
                assert after.old_price == before.new_price  # recorded in order, none lost
