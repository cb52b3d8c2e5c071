"""Overload (devices/api/shed_poll.py): a poll that waited past DEVICE_POLL_SHED_AFTER gets
the idle answer at once, unexamined, and is counted; a queued vend stays queued for the next
poll; what writes (confirmations, registrations) is never shed."""

import asyncio
import json
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.choices import CommandKind, CommandState, Protocol
from devices.models import Command, Device
from transactions.choices import TransactionState
from transactions.commands import queue_command
from transactions.services import request_vend
from vending_site.http import asgi_devices
from vending_site.observability import metrics
from vending_site.tests.test_wsgi import call

from .helpers import MAC, confirm_body, register_body
from .test_poll_shortcut import app  # noqa: F401 - the fixture: counts the stack's calls

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("own_announcements"),
]

DEVICE_ID = "ESP32_6CC8404FE03C"
POLL = f"/esp32/commands/{DEVICE_ID}"


def arrived(seconds_ago: float) -> str:
    """``X-Request-Start`` as nginx sets it, for a request read ``seconds_ago``."""
    return f"t={time.time() - seconds_ago:.3f}"


def shed_total() -> float:
    """This process' shed polls (another xdist worker writes to the same metric files)."""
    metrics.tally.flush()
    return sum(
        metrics.shed_counter(dialect=dialect, reason=reason)._value.get()
        for dialect in (Protocol.WIFI_V2, Protocol.WIFI_DOCUMENTED)
        for reason in metrics.SHED_REASONS
    )


@pytest.fixture
def fresh(settings):
    """Nothing kept: every poll not shed reaches the database (the slow case)."""
    settings.DEVICE_POLL_CACHE_SECONDS = 0


def test_a_poll_that_waited_past_the_budget_is_answered_idle_at_once_and_counted(
    online_device,
    app,  # noqa: F811
    fresh,
    settings,
):
    before = shed_total()
    with CaptureQueriesContext(connection) as captured:
        status, headers, content = call(
            POLL, app=app, x_request_start=arrived(1.5), x_request_id="shed-1"
        )
    settings.DEVICE_POLL_SHORTCUT = False  # the full stack's idle answer, to compare
    _status, full, _content = call(POLL, app=app, x_request_id="stack-1")

    assert (status, content, len(captured)) == (200, b"null", 0)
    assert headers == {**full, "x-request-id": "shed-1"}
    assert app.stack_calls == 1  # only the second
    assert shed_total() == before + 1
    # What the Polls shed alert reads: every process' files, this one's included.
    assert metrics.counter_total("vending_polls_shed") >= shed_total()


def test_a_poll_within_the_budget_or_with_shedding_off_is_answered_as_usual(
    online_device,
    app,  # noqa: F811
    fresh,
    settings,
):
    queue_command(device=online_device, kind=CommandKind.VEND, slot=2)
    before = shed_total()
    settings.DEVICE_POLL_SHED_AFTER = 0

    _status, _headers, content = call(POLL, app=app, x_request_start=arrived(2.5))

    assert json.loads(content)["slot"] == 2
    assert shed_total() == before


def test_a_queued_vend_is_not_handed_to_a_shed_poll_and_the_next_poll_delivers_it_once(
    online_device,
    app,  # noqa: F811
    fresh,
):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=3)

    shed = call(POLL, app=app, x_request_start=arrived(1.2))
    command.refresh_from_db()
    state_after_shed = command.state
    delivered = call(POLL, app=app, x_request_start=arrived(0.1))
    again = call(POLL, app=app)

    assert shed[2] == b"null" and state_after_shed == CommandState.QUEUED
    assert json.loads(delivered[2])["command"] == "VEND" and json.loads(delivered[2])["slot"] == 3
    assert again[2] == b"null"
    command.refresh_from_db()
    assert command.state == CommandState.SENT
    assert Command.objects.filter(device=online_device, state=CommandState.SENT).count() == 1


def test_a_late_documented_poll_gets_no_command_and_keeps_its_vend(
    online_device,
    app,  # noqa: F811
    fresh,
):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=1)

    status, headers, content = call(
        "/esp32/wifi/command", app=app, device_id=MAC, x_request_start=arrived(2)
    )

    assert (status, content, headers["content-type"]) == (200, b"NO_COMMAND", "text/plain")
    command.refresh_from_db()
    assert command.state == CommandState.QUEUED


def test_confirmations_and_registrations_are_never_shed(
    online_device,
    app,  # noqa: F811
    fresh,
):
    txn = request_vend(device=online_device, slot_number=4)
    call(POLL, app=app)  # delivered
    before = shed_total()
    late = {"x_request_start": arrived(2.9)}

    confirmed = call(
        "/esp32/confirm",
        method="POST",
        body=json.dumps(confirm_body(slot=4)).encode(),
        app=app,
        **late,
    )
    registered = call(
        "/esp32/register",
        method="POST",
        body=json.dumps(register_body(device_id="ESP32_AABBCCDDEEFF")).encode(),
        app=app,
        **late,
    )

    assert confirmed[0] == 200 and json.loads(confirmed[2])["status"] == "ok"
    txn.refresh_from_db()
    assert txn.state == TransactionState.SUCCEEDED
    assert registered[0] == 200
    assert Device.objects.filter(device_id="ESP32_AABBCCDDEEFF").exists()
    assert shed_total() == before


def test_a_late_poll_the_full_path_would_refuse_is_still_refused(
    online_device,
    app,  # noqa: F811
    fresh,
    settings,
):
    settings.DEVICE_ALLOWED_NETWORKS = ["10.0.0.0/8"]

    status, _headers, content = call(POLL, app=app, x_request_start=arrived(2))

    assert status == 403 and json.loads(content)["code"] != ""
    assert app.stack_calls == 1


# --- manage.py serve (ASGI): the device thread's queue -----------------------------------


def asgi_get(application, path: str, headers=()) -> tuple[int, dict, bytes]:
    """One GET through an ASGI application, as granian hands it over."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")] + [(k.encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def run():
        await application(scope, receive, send)

    return scope, run, sent


def answered(sent) -> tuple[int, dict, bytes]:
    start, body = sent
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body["body"]


def test_under_asgi_a_poll_behind_a_deep_queue_is_shed_on_the_loop_before_the_hop(
    online_device, fresh, monkeypatch
):
    from vending_site.asgi import application

    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=5)
    queue = asgi_devices.device_queue
    monkeypatch.setattr(queue, "entered", queue.started + 40)  # 40 at 50 ms each: 2 s ahead
    monkeypatch.setattr(queue, "per_request", 0.05)
    hops = []
    monkeypatch.setattr(application.device_app, "respond", lambda *args: hops.append(args) or None)
    before = shed_total()

    _scope, run, sent = asgi_get(application, POLL)
    asyncio.run(run())

    assert answered(sent)[::2] == (200, b"null")
    assert hops == []  # no thread hop paid
    command.refresh_from_db()
    assert command.state == CommandState.QUEUED
    assert shed_total() == before + 1


def test_under_asgi_a_poll_that_waited_for_the_busy_device_thread_is_shed_in_it(
    online_device, fresh, settings
):
    from vending_site.asgi import application

    settings.DEVICE_POLL_SHED_AFTER = 0.05
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=5)
    release = threading.Event()
    busy = sync_to_async(release.wait, thread_sensitive=True)  # the device thread's own
    before = shed_total()

    async def scenario():
        blocker = asyncio.ensure_future(busy(10))
        await asyncio.sleep(0.05)  # the thread is taken
        _scope, run, sent = asgi_get(application, POLL)
        poll = asyncio.ensure_future(run())
        await asyncio.sleep(0.3)  # the poll waits in the queue, past the budget
        waiting = asgi_devices.device_queue.waiting
        release.set()
        await asyncio.gather(blocker, poll)
        return waiting, sent

    waiting, sent = asyncio.run(scenario())

    assert waiting == 1  # the poll, behind the blocker
    assert answered(sent)[::2] == (200, b"null")
    command.refresh_from_db()
    assert command.state == CommandState.QUEUED
    assert shed_total() == before + 1
    assert asgi_devices.device_queue.waiting == 0


def test_the_shed_counter_is_on_metrics_from_the_start(client):
    body = client.get("/metrics").content.decode()

    assert 'vending_polls_shed_total{dialect="wifi_v2",reason="late"}' in body
    assert 'vending_polls_shed_total{dialect="wifi_v2",reason="queue"}' in body
