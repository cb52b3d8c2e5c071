"""The idle poll of a kept machine answered from memory (devices/api/kept_poll.py): no
query, no Redis round trip, the stack's answer; and every poll the full path would refuse,
count differently or write for still reaches it."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_prometheus.middleware import Metrics

from devices.choices import Protocol
from devices.models import CommunicationLog, Device
from vending_site.observability import metrics
from vending_site.tests.test_wsgi import call

from .test_poll_shortcut import app  # noqa: F401 - the fixture: counts the stack's calls

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("own_announcements"),
]


DEVICE_ID = "ESP32_6CC8404FE03C"
POLL = f"/esp32/commands/{DEVICE_ID}"


@pytest.fixture
def kept(online_device, app):  # noqa: F811
    """The machine, polled once through the shortcut: kept from now on."""
    assert call(POLL, app=app)[::2] == (200, b"null")
    assert app.stack_calls == 0
    return online_device


def test_a_kept_machine_idle_poll_reads_nothing_and_answers_as_the_stack(
    kept,
    app,  # noqa: F811
    settings,
):
    with CaptureQueriesContext(connection) as captured:
        status, fast, content = call(POLL, app=app, x_request_id="kept-1")
    settings.DEVICE_POLL_SHORTCUT = False
    _status, full, _content = call(POLL, app=app, x_request_id="stack-1")

    assert (status, content, len(captured)) == (200, b"null", 0)
    assert app.stack_calls == 1  # only the second
    assert fast == {**full, "x-request-id": "kept-1"}


def test_a_kept_machine_asked_for_from_another_address_is_refused_by_the_stack(
    kept,
    app,  # noqa: F811
):
    status, _headers, content = call(POLL, app=app, remote_addr="127.0.0.2")

    assert status == 403 and json.loads(content)["code"] == "device_bound_elsewhere"
    assert app.stack_calls == 1
    kept.refresh_from_db()
    assert kept.moved_to == "127.0.0.2"  # noted for staff, as for any refused move
    assert CommunicationLog.objects.filter(device_key=DEVICE_ID, level="error").exists()


def test_a_browser_asking_for_a_kept_machine_is_refused_by_the_stack(kept, app):  # noqa: F811
    status, _headers, _content = call(POLL, app=app, user_agent="Mozilla/5.0 (X11)")

    assert status == 403
    assert app.stack_calls == 1


def test_a_kept_machine_that_went_offline_comes_online_again_at_its_poll(
    kept,
    app,  # noqa: F811
    settings,
):
    from datetime import timedelta

    from django.utils import timezone

    from devices import poll_cache

    long_ago = timezone.now() - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER + 5)
    Device.objects.filter(pk=kept.pk).update(last_seen=long_ago)  # no announcement
    row = poll_cache.cached(DEVICE_ID)
    row.last_seen = long_ago  # the kept row, as a machine silent for a while leaves it
    assert not row.is_online

    assert call(POLL, app=app)[::2] == (200, b"null")

    assert Device.objects.get(pk=kept.pk).last_seen > long_ago
    assert app.stack_calls == 0


def test_kept_polls_count_in_the_poll_and_request_metrics_once_tallied(kept, app):  # noqa: F811
    polls = metrics.DEVICE_POLLS.labels(dialect=Protocol.WIFI_V2)
    by_view = Metrics.get_instance().responses_by_status_view_method.labels(
        status="200", view="esp32-poll", method="GET"
    )
    latency = Metrics.get_instance().requests_latency_by_view_method.labels(
        view="esp32-poll", method="GET"
    )
    metrics.tally.flush()
    before = (polls._value.get(), by_view._value.get(), sum(b.get() for b in latency._buckets))

    for _ in range(3):
        call(POLL, app=app)
    metrics.tally.flush()

    after = (polls._value.get(), by_view._value.get(), sum(b.get() for b in latency._buckets))
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 3, 3]
    assert app.stack_calls == 0


# --- Under the ASGI server, on the event loop (manage.py serve) ----------------------------


def test_on_the_event_loop_a_kept_idle_poll_is_answered_without_the_database(kept, settings):
    import asyncio

    from devices.api.kept_poll import answer_scope
    from vending_site.tests.test_asgi_devices import scope_for

    settings.DEVICE_SEEN_FLUSH_SECONDS = 0.5  # as shipped: refreshes noted for the writer

    with CaptureQueriesContext(connection) as captured:
        status, headers, body = asyncio.run(answer_scope(scope_for(POLL)))

    assert (status, body, len(captured)) == (200, b"null", 0)
    assert (b"Content-Type", b"application/json") in headers


def test_on_the_event_loop_a_poll_that_would_write_is_left_to_the_thread(kept, settings):
    import asyncio
    from datetime import timedelta

    from django.utils import timezone

    from devices import poll_cache
    from devices.api.kept_poll import answer_scope
    from vending_site.tests.test_asgi_devices import scope_for

    settings.DEVICE_SEEN_FLUSH_SECONDS = 0.5
    assert asyncio.run(answer_scope(scope_for(POLL))) is not None
    row = poll_cache.cached(DEVICE_ID)
    row.last_seen = timezone.now() - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER + 5)

    assert asyncio.run(answer_scope(scope_for(POLL))) is None  # coming online writes


def test_polls_of_machines_nobody_keeps_leave_no_throttle_totals_behind(db, app, settings):  # noqa: F811
    """Anyone on the LAN can send made-up ids: what is learnt for polls from memory is
    learnt only for machines a worker may keep (approved, bound)."""
    from vending_site.http.deferred_throttle import windows

    settings.DEVICE_APPROVAL_REQUIRED = True
    for n in range(5):
        assert call(f"/esp32/commands/ESP32_00000000000{n}", app=app)[0] == 200  # pending

    assert windows._known == {}
