"""The periodic reconciliation of what a worker keeps (devices/poll_cache.py): a kept answer
that still matches the database is kept on, with no read at its polls; one whose
announcement was lost is dropped at the next reconciliation; and when reconciliation cannot
run, kept answers lapse after DEVICE_POLL_CACHE_SECONDS as without it.

The clock the cache reads is the test's (``clock``): "many periods later" is a number, not a
wait."""

import json
import os

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import poll_cache
from devices.approval import set_approved
from devices.choices import CommandKind, CommandState
from devices.models import Command, Device
from devices.selectors import device_for_poll
from tests.factories import DeviceFactory
from transactions.commands import queue_command
from vending_site.tests.test_wsgi import call
from vending_site.wsgi import Application

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("own_announcements"),
]

DEVICE_ID = "ESP32_6CC8404FE03C"
POLL = f"/esp32/commands/{DEVICE_ID}"
CACHE_SECONDS = 5.0
PERIOD = 2.5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch, settings):
    settings.DEVICE_POLL_CACHE_SECONDS = CACHE_SECONDS
    settings.DEVICE_POLL_RECONCILE_SECONDS = PERIOD
    clock = Clock()
    monkeypatch.setattr(poll_cache, "_clock", clock)
    yield clock
    poll_cache.reconciler.stop()


@pytest.fixture
def app():
    return Application()


def polled(app, path: str = POLL) -> tuple[int, bytes, int]:
    """(status, body, queries) of one poll."""
    with CaptureQueriesContext(connection) as captured:
        status, _headers, content = call(path, app=app)
    return status, content, len(captured)


def reconciled() -> tuple[int, int]:
    """(machines dropped, queries made) by one reconciliation, run here."""
    with CaptureQueriesContext(connection) as captured:
        dropped = poll_cache.reconcile()
    return dropped, len(captured)


@pytest.fixture
def lost_announcements(monkeypatch):
    """Every announcement from now on is lost, as when its publisher dies between its
    commit and its publish."""
    monkeypatch.setattr(poll_cache.topic, "publish", lambda ids: None)


def test_a_vend_whose_announcement_was_lost_is_delivered_at_the_first_poll_after_reconciliation(
    online_device, app, clock, lost_announcements
):
    assert polled(app) == (200, b"null", 1)  # kept
    queue_command(device=online_device, kind=CommandKind.VEND, slot=3)
    assert polled(app) == (200, b"null", 0)  # the kept answer: nobody said otherwise

    assert reconciled() == (1, 2)  # what is queued, then the kept rows
    status, content, _queries = polled(app)

    assert status == 200 and json.loads(content)["slot"] == 3
    assert polled(app)[:2] == (200, b"null")  # handed over once
    assert Command.objects.get().state == CommandState.SENT


def test_a_revoke_whose_announcement_was_lost_stops_the_kept_answer_after_reconciliation(
    online_device, app, clock, settings, lost_announcements
):
    settings.DEVICE_APPROVAL_REQUIRED = True
    polled(app)
    queue_command(device=online_device, kind=CommandKind.VEND, slot=1)
    set_approved(devices=Device.objects.filter(pk=online_device.pk), approved=False)
    assert polled(app) == (200, b"null", 0)

    assert reconciled()[0] == 1
    status, content, queries = polled(app)

    assert (status, content) == (200, b"null") and queries >= 1  # read: not approved
    assert poll_cache.cached(DEVICE_ID) is None  # and not kept again
    assert Command.objects.get().state != CommandState.SENT  # not handed over


def test_kept_machines_stay_kept_across_many_periods_while_nothing_changes(
    online_device, app, clock, monkeypatch
):
    monkeypatch.setattr(poll_cache, "CHUNK", 2)
    others = [DeviceFactory(last_seen=timezone.now()) for _ in range(4)]
    paths = [POLL] + [f"/esp32/commands/{device.device_id}" for device in others]
    assert [polled(app, path)[2] for path in paths] == [1] * 5

    for _period in range(20):  # 50 s: ten times what one read is kept without reconciliation
        clock.now += PERIOD
        assert reconciled() == (0, 4)  # what is queued, then five rows two a query
        assert [polled(app, path) for path in paths] == [(200, b"null", 0)] * 5


@pytest.mark.parametrize(
    "change",
    [
        {"approved": False},
        {"bound_address": "192.0.2.7"},
        {"transport": "serial"},
        {"disconnected_at": timezone.now()},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_change_the_kept_answer_rests_on_made_unannounced_drops_it(
    online_device, app, clock, change
):
    polled(app)
    Device.objects.filter(pk=online_device.pk).update(**change)  # update(): no announcement
    assert poll_cache.cached(DEVICE_ID) is not None

    assert reconciled()[0] == 1
    assert poll_cache.cached(DEVICE_ID) is None


@pytest.mark.parametrize("again", [False, True], ids=["deleted", "deleted-and-added-again"])
def test_a_machine_deleted_unannounced_is_dropped(
    online_device, app, clock, lost_announcements, again
):
    polled(app)
    Device.objects.filter(pk=online_device.pk).delete()
    if again:  # another row of the same id, as it was: another machine for the ledger
        Device.objects.bulk_create([Device(device_id=DEVICE_ID, bound_address="127.0.0.1")])

    assert reconciled()[0] == 1


def test_a_column_the_idle_poll_does_not_read_leaves_the_kept_answer(online_device, app, clock):
    polled(app)
    Device.objects.filter(pk=online_device.pk).update(
        firmware_version="9.9", last_seen=timezone.now(), moved_to="192.0.2.8"
    )

    assert reconciled()[0] == 0
    assert polled(app)[2] == 0


def test_without_reconciliation_a_kept_answer_lapses_after_the_cache_seconds(
    online_device, app, clock, settings
):
    settings.DEVICE_POLL_RECONCILE_SECONDS = 0
    polled(app)

    clock.now += CACHE_SECONDS * 0.74
    assert polled(app)[2] == 0
    clock.now += CACHE_SECONDS * 0.27

    assert polled(app)[2] == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_when_the_reconciler_cannot_read_kept_answers_lapse_as_without_it(
    online_device, app, clock, monkeypatch, caplog, lost_announcements
):
    polled(app)
    queue_command(device=online_device, kind=CommandKind.VEND, slot=2)

    def unreachable(*args, **kwargs):
        raise DatabaseError("the database is gone")

    monkeypatch.setattr(poll_cache, "poll_states", unreachable)
    for _tick in range(2):
        clock.now += PERIOD
        poll_cache.reconciler.tick()  # what its thread runs: logs, does not raise
    assert "poll-cache-reconciler failed" in caplog.text
    clock.now += CACHE_SECONDS - 2 * PERIOD + 0.01
    status, content, queries = polled(app)

    assert status == 200 and json.loads(content)["slot"] == 2
    assert queries >= 1


def test_the_reconciler_thread_drops_a_vend_whose_announcement_was_lost(
    online_device, app, clock, settings, lost_announcements
):
    from tests.scratch.net import wait_for

    settings.DEVICE_POLL_RECONCILE_SECONDS = 0.05
    polled(app)  # kept: starts this process's reconciler
    assert poll_cache.reconciler.running
    queue_command(device=online_device, kind=CommandKind.VEND, slot=5)

    # The clock stands still: only a reconciliation can drop what is kept.
    wait_for(lambda: poll_cache.cached(DEVICE_ID) is None, what="a reconciliation")
    status, content, _queries = polled(app)

    assert status == 200 and json.loads(content)["slot"] == 5


def test_a_stopped_reconciler_lets_kept_answers_lapse_and_the_next_kept_one_starts_it(
    online_device, app, clock, settings
):
    settings.DEVICE_POLL_RECONCILE_SECONDS = 0.05
    polled(app)
    poll_cache.reconciler.stop()  # as a thread that died
    assert not poll_cache.reconciler.running

    clock.now += CACHE_SECONDS + 0.01
    assert polled(app) == (200, b"null", 1)  # lapsed: read, and kept again

    assert poll_cache.reconciler.running


def test_a_forked_child_keeps_nothing_and_runs_no_reconciler_of_its_parent(
    online_device, app, clock, settings
):
    settings.DEVICE_POLL_RECONCILE_SECONDS = 0.05
    polled(app)
    assert poll_cache.cached(DEVICE_ID) is not None and poll_cache.reconciler.running

    child = os.fork()
    if child == 0:  # the child checks and leaves without running the parent's exit hooks
        fresh = poll_cache.cached(DEVICE_ID) is None and not poll_cache.reconciler.running
        os._exit(0 if fresh else 1)
    _pid, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert poll_cache.reconciler.running  # the parent's own goes on


# --- Races with announcements and reads ----------------------------------------------------


def test_a_reconciliation_that_races_an_announcement_does_not_bring_the_machine_back(
    online_device, app, clock, monkeypatch
):
    polled(app)
    read = poll_cache.poll_states

    def read_then_vend(first, last, fields):
        rows = read(first, last, fields)  # nothing queued yet
        queue_command(device=online_device, kind=CommandKind.VEND, slot=4)  # announced
        poll_cache.topic.catch_up()  # heard (this process hears its own twice: at once, now)
        return rows

    monkeypatch.setattr(poll_cache, "poll_states", read_then_vend)

    assert reconciled()[0] == 0  # its read matched; the announcement dropped the machine
    assert poll_cache.cached(DEVICE_ID) is None
    status, content, _queries = polled(app)
    assert status == 200 and json.loads(content)["slot"] == 4


def test_a_read_begun_before_a_reconciliation_dropped_the_machine_is_not_kept(
    online_device, app, clock, lost_announcements
):
    polled(app)
    token = poll_cache.begin()
    before = device_for_poll(DEVICE_ID)  # a poll's read, before the vend
    queue_command(device=online_device, kind=CommandKind.VEND, slot=1)
    assert reconciled()[0] == 1

    poll_cache.remember(before, token)  # that poll ends now

    assert poll_cache.cached(DEVICE_ID) is None
    status, content, _queries = polled(app)
    assert status == 200 and json.loads(content)["slot"] == 1


def test_a_machine_kept_after_the_reconciliation_read_is_not_moved_back_in_time(
    online_device, app, clock, monkeypatch
):
    """An entry replaced while a reconciliation read is left as the newer read made it."""
    polled(app)
    read = poll_cache.poll_states

    def read_then_keep_again(first, last, fields):
        rows = read(first, last, fields)
        poll_cache.topic.publish([DEVICE_ID])  # a change announced: forgotten
        poll_cache.topic.catch_up()  # (this process hears its own twice: here, and now)
        clock.now += CACHE_SECONDS - 0.1
        polled(app)  # read and kept again, later
        return rows

    monkeypatch.setattr(poll_cache, "poll_states", read_then_keep_again)
    reconciled()

    clock.now += CACHE_SECONDS * 0.7  # past what the reconciliation's token would give
    assert polled(app)[2] == 0  # still the later read's answer
