"""The v2.1 poll's shortcut in front of Django's handler (devices/api/poll_shortcut.py).

Each test sends requests into the WSGI application as granian does. What the shortcut
answers must be what the whole stack answers (body, headers, log, metrics, writes); what it
cannot answer with 200 (refusals, throttling, errors) must reach the stack counted once and
answered by it; and a command it claims must be delivered exactly once.
"""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_prometheus.middleware import Metrics

from devices.choices import CommandKind, CommandState, LogLevel, Protocol
from devices.models import Command, CommunicationLog, Device
from transactions.commands import queue_command
from vending_site.observability import metrics
from vending_site.tests.test_wsgi import call
from vending_site.wsgi import Application

from .helpers import writes

pytestmark = pytest.mark.django_db(transaction=True)

DEVICE_ID = "ESP32_6CC8404FE03C"
POLL = f"/esp32/commands/{DEVICE_ID}"


class HandlerNotCalled(AssertionError):
    pass


@pytest.fixture
def app():
    """A fresh application whose device handler (middleware, DRF) fails when it is used, so
    a test knows which side answered."""
    application = Application()
    application.stack_calls = 0
    real = application.device_handler

    def counting(environ, start_response):
        application.stack_calls += 1
        return real(environ, start_response)

    application.device_handler = counting
    return application


def test_an_idle_poll_is_answered_by_the_shortcut_with_one_query_and_no_write(
    online_device, app, settings
):
    settings.DEVICE_POLL_CACHE_SECONDS = 0  # nothing kept (test_poll_cache.py): the read each time
    call(POLL, app=app)  # the first may refresh last_seen

    with CaptureQueriesContext(connection) as captured:
        status, headers, content = call(POLL, app=app)

    assert (status, content) == (200, b"null")
    assert app.stack_calls == 0
    assert len(captured) == 1 and writes(captured.captured_queries) == []
    assert headers["content-type"] == "application/json"


def test_the_shortcut_answers_with_the_headers_the_stack_answers_with(online_device, app, settings):
    _status, fast, _content = call(POLL, app=app, x_request_id="shortcut-1")
    settings.DEVICE_POLL_SHORTCUT = False
    _status, full, _content = call(POLL, app=app, x_request_id="stack-1")

    assert app.stack_calls == 1  # only the second
    assert fast == {**full, "x-request-id": "shortcut-1"}
    assert full["x-request-id"] == "stack-1"


def test_a_queued_vend_is_delivered_by_the_next_poll_exactly_once(online_device, app):
    assert call(POLL, app=app)[2] == b"null"
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=3)

    status, _headers, content = call(POLL, app=app)
    again = call(POLL, app=app)

    assert status == 200
    assert json.loads(content) == {**json.loads(content), "command": "VEND", "slot": 3}
    assert again[2] == b"null"
    command.refresh_from_db()
    assert command.state == CommandState.SENT
    assert app.stack_calls == 0
    sent = CommunicationLog.objects.filter(device=online_device, direction="out")
    assert sent.count() == 1  # the delivery is logged once, as the view logs it


def test_a_command_queued_before_a_revoke_is_not_handed_over_by_the_shortcut(online_device, app):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=1)
    Device.objects.filter(pk=online_device.pk).update(approved=False)  # a revoke racing it

    assert call(POLL, app=app)[:3:2] == (200, b"null")
    command.refresh_from_db()
    assert command.state == CommandState.QUEUED


def test_a_throttled_machine_is_still_answered_429_by_the_stack_counted_once(
    online_device, app, settings
):
    settings.DEVICE_THROTTLE = "3/min"

    answers = [call(POLL, app=app) for _ in range(4)]

    assert [status for status, _headers, _content in answers] == [200, 200, 200, 429]
    assert json.loads(answers[3][2])["code"] == "throttled"
    assert int(answers[3][1]["retry-after"]) > 0
    assert app.stack_calls == 1  # the refusal only


def test_a_machine_bound_elsewhere_is_refused_by_the_stack_with_its_log_row(online_device, app):
    Device.objects.filter(pk=online_device.pk).update(bound_address="192.0.2.7")

    status, _headers, content = call(POLL, app=app)

    assert status == 403
    assert json.loads(content)["code"] == "device_bound_elsewhere"
    assert app.stack_calls == 1
    rejected = CommunicationLog.objects.filter(level=LogLevel.ERROR, device_key=DEVICE_ID)
    assert rejected.count() == 1  # written once, by the stack's refusal


def test_a_new_machine_is_registered_once_and_pending_by_its_first_poll(db, app, settings):
    settings.DEVICE_APPROVAL_REQUIRED = True

    status, _headers, content = call("/esp32/commands/ESP32_0A0B0C0D0E0F", app=app)

    assert (status, content) == (200, b"null")
    device = Device.objects.get(device_id="ESP32_0A0B0C0D0E0F")
    assert device.awaiting_approval
    notes = CommunicationLog.objects.filter(device=device, message__contains="unregistered")
    assert notes.count() == 1


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/esp32/commands/ESP32_NOPE!", {}, 400),
        ("/esp32/commands/favicon.ico", {}, 404),
        (POLL, {"origin": "http://evil.example"}, 403),
        (POLL, {"user_agent": "Mozilla/5.0 (X11)"}, 403),
    ],
)
def test_what_the_shortcut_cannot_answer_goes_to_the_stack(
    online_device, app, path, headers, status
):
    answered = call(path, app=app, **headers)

    assert answered[0] == status
    assert app.stack_calls == 1


def test_a_head_or_post_to_the_poll_path_is_the_stacks(online_device, app):
    assert call(POLL, app=app, method="HEAD")[0] == 405
    assert call(POLL, app=app, method="POST", body=b"{}")[0] == 405
    assert app.stack_calls == 2


def test_with_a_token_required_every_poll_is_the_stacks(online_device, app, settings):
    settings.DEVICE_TOKEN_REQUIRED = True

    assert call(POLL, app=app)[0] == 403  # no X-Device-Token
    assert app.stack_calls == 1


def test_outside_the_allowed_networks_the_stack_refuses(online_device, app, settings):
    settings.DEVICE_ALLOWED_NETWORKS = ["192.0.2.0/24"]

    status, _headers, content = call(POLL, app=app)

    assert status == 403 and json.loads(content)["code"] == "network_not_allowed"
    assert app.stack_calls == 1


def test_a_poll_counts_once_in_the_poll_metric_and_the_request_metrics(online_device, app):
    polls = metrics.DEVICE_POLLS.labels(dialect=Protocol.WIFI_V2)
    by_view = Metrics.get_instance().responses_by_status_view_method.labels(
        status="200", view="esp32-poll", method="GET"
    )
    total = Metrics.get_instance().requests_total
    before = (polls._value.get(), by_view._value.get(), total._value.get())

    call(POLL, app=app)

    after = (polls._value.get(), by_view._value.get(), total._value.get())
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    assert app.stack_calls == 0


def test_with_the_shortcut_off_every_poll_goes_through_the_stack(online_device, app, settings):
    settings.DEVICE_POLL_SHORTCUT = False

    assert call(POLL, app=app)[:3:2] == (200, b"null")
    assert app.stack_calls == 1
    assert Command.objects.count() == 0
