"""The idle poll is the hot path: every machine calls it every 2 s.

Each test drives the real view (Django's test client, every middleware, the DRF checks and
throttles) for a known, online device with nothing queued, on both WiFi dialects. The
profile behind these budgets: ``bench/poll_profile.py``.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.choices import CommandKind
from devices.models import Device
from transactions.commands import queue_command

from .helpers import poll, poll_documented, writes

pytestmark = pytest.mark.django_db

DIALECTS = {
    "v2.1 GET /esp32/commands/<id>": (poll, b"null"),
    "documented GET /esp32/wifi/command": (poll_documented, b"NO_COMMAND"),
}


@pytest.fixture(params=list(DIALECTS), ids=list(DIALECTS))
def dialect(request):
    return DIALECTS[request.param]


def seen(device: Device, seconds_ago: float) -> None:
    Device.objects.filter(pk=device.pk).update(
        last_seen=timezone.now() - timedelta(seconds=seconds_ago)
    )


def test_an_idle_poll_within_the_write_interval_is_one_query_and_writes_nothing(
    api_client, online_device, settings, dialect
):
    settings.DEVICE_SEEN_WRITE_INTERVAL = 5
    seen(online_device, 2)
    send, idle_body = dialect

    with CaptureQueriesContext(connection) as captured:
        response = send(api_client)

    assert response.status_code == 200
    assert response.content == idle_body
    assert len(captured) <= 1, [query["sql"] for query in captured.captured_queries]
    assert writes(captured.captured_queries) == []


def test_an_idle_poll_after_the_write_interval_writes_last_seen_once_without_the_writer(
    api_client, online_device, settings, dialect
):
    # With the writer (devices/presence.py, test_presence.py) the poll writes nothing.
    settings.DEVICE_SEEN_FLUSH_SECONDS = 0
    settings.DEVICE_SEEN_WRITE_INTERVAL = 3
    seen(online_device, 4)  # still online (10 s), but the stored last_seen is stale
    send, idle_body = dialect

    with CaptureQueriesContext(connection) as captured:
        response = send(api_client)

    assert response.content == idle_body
    changes = writes(captured.captured_queries)
    assert len(changes) == 1, changes
    assert changes[0].lstrip().upper().startswith('UPDATE "DEVICES_DEVICE"')
    assert "last_seen" in changes[0]
    assert len(captured) == 2  # the read, the write


def test_a_burst_of_idle_polls_costs_one_query_each(api_client, online_device, dialect):
    send, _idle_body = dialect
    send(api_client)  # the first may refresh last_seen

    with CaptureQueriesContext(connection) as captured:
        for _ in range(10):
            send(api_client)

    assert len(captured) == 10
    assert writes(captured.captured_queries) == []


def test_the_one_query_still_sees_a_queued_command(api_client, online_device, dialect):
    send, idle_body = dialect
    assert send(api_client).content == idle_body
    queue_command(device=online_device, kind=CommandKind.VEND, slot=2)

    response = send(api_client)

    assert response.json()["command"] == "VEND"
    assert response.json()["slot"] == 2
    assert send(api_client).content == idle_body


def test_an_unknown_device_is_still_not_found_by_the_one_query(api_client, db):
    response = poll(api_client, device_id="NOT_A_DEVICE")

    assert response.status_code == 404


@pytest.mark.postgres
def test_on_postgresql_the_idle_poll_query_is_an_index_scan_on_the_device_id(
    api_client, online_device, dialect
):
    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN's plan is PostgreSQL's; SQLite has no such planner output")
    send, _idle_body = dialect
    # Enough rows that a sequential scan would not be chosen for a table of one page.
    Device.objects.bulk_create(Device(device_id=f"ESP32_{n:012X}") for n in range(3000))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE devices_device")
        cursor.execute("ANALYZE devices_command")
    send(api_client)

    with CaptureQueriesContext(connection) as captured:
        send(api_client)
    (query,) = captured.captured_queries
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + query["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())

    device_scans = [line for line in plan.splitlines() if " on devices_device" in line]
    assert device_scans, plan
    assert all("Index" in line for line in device_scans), plan
    assert "Seq Scan on devices_device" not in plan, plan
