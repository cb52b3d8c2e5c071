"""Coalesced ``last_seen`` writes (devices/presence.py), on SQLite and PostgreSQL.

These tests commit (``transactional_db``): the writer thread has a connection of its own,
which sees only committed rows, as in a server.
"""

import os
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import presence
from devices.models import Device
from tests.factories import DeviceFactory

from .helpers import poll, writes

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def buffered(settings):
    """Refreshes go through the process's writer, as in a server; it is stopped (its thread
    joined, its connection closed) before the test's database is emptied."""
    settings.DEVICE_SEEN_FLUSH_SECONDS = 0.2
    settings.DEVICE_SEEN_WRITE_INTERVAL = 3
    presence.buffer.stop()
    yield presence.buffer
    presence.buffer.stop()


def stored(device: Device):
    return Device.objects.values_list("last_seen", flat=True).get(pk=device.pk)


def seen_ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def test_a_stale_refresh_of_an_online_device_is_not_written_by_its_poll(api_client, buffered):
    device = DeviceFactory(device_id="ESP32_6CC8404FE03C", last_seen=seen_ago(4))
    before = stored(device)

    with CaptureQueriesContext(connection) as captured:
        response = poll(api_client)

    assert response.status_code == 200
    assert writes(captured.captured_queries) == []
    assert len(captured) == 1  # the poll's one read
    # Noted for the writer, which writes it within its interval.
    deadline = time.monotonic() + 5
    while stored(device) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored(device) > before


def test_the_writer_stores_the_refresh_within_a_flush_interval(api_client, buffered):
    device = DeviceFactory(device_id="ESP32_6CC8404FE03C", last_seen=seen_ago(4))
    before = stored(device)
    started = timezone.now()

    poll(api_client)

    deadline = time.monotonic() + 5
    while stored(device) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored(device) >= started
    assert buffered.pending() == {}


def test_a_device_coming_online_is_written_by_its_poll(api_client, buffered):
    device = DeviceFactory(device_id="ESP32_6CC8404FE03C", last_seen=seen_ago(60))
    assert not device.is_online

    with CaptureQueriesContext(connection) as captured:
        poll(api_client)

    update, published = writes(captured.captured_queries)
    assert update.startswith('UPDATE "devices_device" SET "last_seen"')
    assert "liveevent" in published  # pages hear that it came online
    assert stored(device) > seen_ago(5)
    assert buffered.pending() == {}


def test_a_refresh_never_moves_last_seen_backwards():
    late, early = seen_ago(1), seen_ago(8)
    ahead = DeviceFactory(last_seen=late)
    behind = DeviceFactory(last_seen=early)
    never = DeviceFactory(last_seen=None)
    moment = seen_ago(4)

    changed = presence.write_seen({ahead.pk: moment, behind.pk: moment, never.pk: moment})

    assert changed == 2
    assert stored(ahead) == late
    assert stored(behind) == moment
    assert stored(never) == moment


def test_a_flush_writes_each_machines_latest_refresh_in_one_statement_on_postgresql():
    devices = DeviceFactory.create_batch(300, last_seen=seen_ago(9))
    moment = seen_ago(1)
    buffer = presence.SeenBuffer(writer=False)
    for device in devices:
        buffer.note(device.pk, seen_ago(2))
        buffer.note(device.pk, moment)  # the latest of a machine's refreshes is kept
        buffer.note(device.pk, seen_ago(3))

    with CaptureQueriesContext(connection) as captured:
        assert buffer.flush() == len(devices)

    updates = [q["sql"] for q in captured.captured_queries if 'UPDATE "devices_device"' in q["sql"]]
    assert len(updates) == (1 if connection.vendor == "postgresql" else len(devices))
    assert set(Device.objects.values_list("last_seen", flat=True)) == {moment}
    assert buffer.pending() == {}


def test_a_failed_flush_keeps_the_refreshes_for_the_next(monkeypatch):
    device = DeviceFactory(last_seen=seen_ago(9))
    buffer = presence.SeenBuffer(writer=False)
    first, later = seen_ago(3), seen_ago(1)
    buffer.note(device.pk, first)

    def unreachable(seen):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(presence, "write_seen", unreachable)
    with pytest.raises(OperationalError):
        buffer.flush()
    buffer.note(device.pk, later)  # noted while the database was away
    monkeypatch.undo()

    assert buffer.pending() == {device.pk: later}
    buffer.flush()
    assert stored(device) == later


def test_stopping_writes_what_the_thread_had_not(buffered, settings):
    settings.DEVICE_SEEN_FLUSH_SECONDS = 2  # the thread would not flush during the test
    device = DeviceFactory(last_seen=seen_ago(9))
    moment = seen_ago(1)
    buffered.note(device.pk, moment)

    buffered.stop()

    assert stored(device) == moment


def test_a_forked_child_starts_with_an_empty_buffer_and_no_thread(buffered, settings):
    settings.DEVICE_SEEN_FLUSH_SECONDS = 2
    device = DeviceFactory(last_seen=seen_ago(9))
    buffered.note(device.pk, seen_ago(1))

    child = os.fork()
    if child == 0:  # the child checks and leaves without running the parent's exit hooks
        os._exit(0 if buffered.pending() == {} and not buffered.writing else 1)
    _pid, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert buffered.writing  # the parent's own thread goes on


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_thread_that_died_is_started_again_by_the_next_note(buffered, monkeypatch):
    device = DeviceFactory(last_seen=seen_ago(9))

    def die():
        raise SystemExit  # what no failure of a flush does (they are all caught)

    monkeypatch.setattr(buffered, "_flush_logged", die)
    buffered.note(device.pk, seen_ago(2))
    first = buffered._thread
    first.join(5)
    assert not buffered.writing
    monkeypatch.undo()

    moment = seen_ago(1)
    buffered.note(device.pk, moment)

    assert buffered.writing and buffered._thread is not first
    buffered.stop()
    assert stored(device) == moment


def test_on_postgresql_a_row_held_elsewhere_fails_the_flush_fast_and_keeps_its_refresh():
    if connection.vendor != "postgresql":
        pytest.skip("row locks and lock_timeout are PostgreSQL's")
    import threading

    from django.db import connections, transaction

    device = DeviceFactory(last_seen=seen_ago(9))
    buffer = presence.SeenBuffer(writer=False)
    moment = seen_ago(1)
    buffer.note(device.pk, moment)
    holding, release = threading.Event(), threading.Event()

    def hold_the_row():
        with transaction.atomic():
            Device.objects.select_for_update().get(pk=device.pk)
            holding.set()
            release.wait(10)
        connections.close_all()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert holding.wait(5)
        with pytest.raises(OperationalError, match="lock timeout"):  # not the statement timeout
            buffer.flush()
        assert buffer.pending() == {device.pk: moment}
    finally:
        release.set()
        holder.join(10)
    buffer.flush()
    assert stored(device) == moment
