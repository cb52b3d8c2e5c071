"""A read never writes: overdue vends move only when the sweeper sweeps.

Every page and endpoint a person or client reads (the REST API, ``/status``, the admin, the
dashboard) is run on a database where a sweep is due, and must send no INSERT, UPDATE or
DELETE; the sweep then moves the vends, as the sweeper process does every few seconds.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.models import Command
from transactions.choices import TransactionState
from transactions.delivery import claim_next_command
from transactions.models import Transaction
from transactions.services import request_vend, sweep

pytestmark = pytest.mark.django_db

WRITES = ("INSERT", "UPDATE", "DELETE")


@pytest.fixture
def overdue(online_device, settings):
    """One vend delivered and never confirmed, one never delivered: both past their time."""
    delivered = request_vend(device=online_device, slot_number=1)
    claim_next_command(device=online_device)
    long_ago = timezone.now() - timedelta(seconds=settings.VEND_CONFIRM_TIMEOUT + 1)
    Transaction.objects.filter(pk=delivered.pk).update(sent_at=long_ago)
    Command.objects.filter(transaction=delivered).update(sent_at=long_ago)
    undelivered = request_vend(device=online_device, slot_number=2)
    Command.objects.filter(transaction=undelivered).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    return delivered, undelivered


READS = {
    "transaction list": lambda txn: "/api/v1/transactions/",
    "transaction detail": lambda txn: f"/api/v1/transactions/{txn.pk}",
    "status": lambda txn: "/status",
    "device list": lambda txn: "/api/v1/devices",
    "firmware device list": lambda txn: "/esp32/devices/list",
    "admin list": lambda txn: reverse("admin:transactions_transaction_changelist"),
    "admin page": lambda txn: reverse("admin:transactions_transaction_change", args=[txn.pk]),
    "dashboard": lambda txn: reverse("dashboard"),
    "dashboard state": lambda txn: reverse("dashboard-api:state"),
    "dashboard transactions": lambda txn: reverse("dashboard-api:transactions"),
    "dashboard machines": lambda txn: reverse("dashboard-api:machines"),
    "dashboard logs": lambda txn: reverse("dashboard-api:logs"),
}


def _states(*txns: Transaction) -> list[str]:
    return [Transaction.objects.get(pk=txn.pk).state for txn in txns]


@pytest.mark.parametrize("read", READS)
def test_a_read_writes_nothing_even_when_a_sweep_is_due(read, overdue, staff):
    delivered, undelivered = overdue
    client = Client()
    client.force_login(staff)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(READS[read](delivered))

    assert response.status_code == 200
    assert [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(WRITES)] == []
    assert _states(delivered, undelivered) == [TransactionState.SENT, TransactionState.QUEUED]


def test_the_sweep_moves_what_the_reads_left_alone(overdue, staff):
    delivered, undelivered = overdue
    client = Client()
    client.force_login(staff)

    result = sweep()  # the sweeper's round
    listed = client.get("/api/v1/transactions/").json()["results"]

    assert (result.expired, result.unconfirmed) == (1, 1)
    assert _states(delivered, undelivered) == [
        TransactionState.UNCONFIRMED,
        TransactionState.EXPIRED,
    ]
    assert {row["id"]: row["state"] for row in listed} == {
        str(delivered.pk): TransactionState.UNCONFIRMED,
        str(undelivered.pk): TransactionState.EXPIRED,
    }
