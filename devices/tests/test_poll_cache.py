"""What a worker keeps about approved machines (devices/poll_cache.py), through the v2.1
poll's shortcuts: an idle poll of a kept machine reads no database, and nothing kept can
delay a command beyond its announcement (or, when that is lost, DEVICE_POLL_CACHE_SECONDS),
hand one over twice, or let a refused sender through."""

import json
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import poll_cache
from devices.approval import accept_move, set_approved
from devices.choices import CommandKind, CommandState
from devices.models import Command, Device
from transactions.commands import queue_command
from vending_site.tests.test_wsgi import call
from vending_site.wsgi import Application

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("own_announcements"),
]


DEVICE_ID = "ESP32_6CC8404FE03C"
POLL = f"/esp32/commands/{DEVICE_ID}"


@pytest.fixture
def app():
    return Application()


def polled(app) -> tuple[int, bytes, int]:
    """(status, body, queries) of one poll."""
    with CaptureQueriesContext(connection) as captured:
        status, _headers, content = call(POLL, app=app)
    return status, content, len(captured)


def test_the_second_idle_poll_of_a_known_machine_reads_no_database(online_device, app):
    first = polled(app)
    second = polled(app)

    assert first == (200, b"null", 1)
    assert second == (200, b"null", 0)


def test_a_vend_queued_while_the_machine_is_kept_is_delivered_at_the_next_poll(online_device, app):
    polled(app)
    assert polled(app)[2] == 0  # kept
    queue_command(device=online_device, kind=CommandKind.VEND, slot=4)

    status, content, _queries = polled(app)

    assert status == 200 and json.loads(content)["slot"] == 4
    assert polled(app)[1] == b"null"  # handed over once
    assert Command.objects.get().state == CommandState.SENT


def test_a_lost_notice_delays_a_vend_by_the_cache_seconds_at_most(
    online_device, app, settings, monkeypatch
):
    settings.DEVICE_POLL_CACHE_SECONDS = 0.3
    polled(app)
    monkeypatch.setattr(poll_cache.topic, "publish", lambda ids: None)  # died before it
    queue_command(device=online_device, kind=CommandKind.VEND, slot=2)

    assert polled(app)[:2] == (200, b"null")  # still the kept answer
    time.sleep(0.35)
    status, content, _queries = polled(app)

    assert status == 200 and json.loads(content)["slot"] == 2


def test_a_move_accepted_while_kept_refuses_the_old_address_at_the_next_poll(online_device, app):
    polled(app)
    assert polled(app)[2] == 0
    Device.objects.filter(pk=online_device.pk).update(moved_to="192.0.2.9")
    accept_move(devices=Device.objects.filter(pk=online_device.pk))

    status, _headers, content = call(POLL, app=app)  # from 127.0.0.1, the old address

    assert status == 403
    assert json.loads(content)["code"] == "device_bound_elsewhere"


def test_a_revoke_while_kept_is_read_fresh_and_hands_over_nothing(online_device, app, settings):
    settings.DEVICE_APPROVAL_REQUIRED = True
    polled(app)
    queue_command(device=online_device, kind=CommandKind.VEND, slot=1)
    set_approved(devices=Device.objects.filter(pk=online_device.pk), approved=False)

    status, content, queries = polled(app)

    assert (status, content) == (200, b"null") and queries >= 1  # read, not kept
    assert Command.objects.get().state != CommandState.SENT


def test_a_machine_deleted_while_kept_is_registered_anew_by_its_next_poll(
    online_device, app, settings
):
    settings.DEVICE_APPROVAL_REQUIRED = True
    polled(app)
    Device.objects.filter(pk=online_device.pk).delete()  # post_delete: its notice

    assert polled(app)[:2] == (200, b"null")
    assert Device.objects.get(device_id=DEVICE_ID).awaiting_approval


def test_a_throttled_kept_machine_is_still_answered_429(online_device, app, settings):
    settings.DEVICE_THROTTLE = "2/min"

    statuses = [call(POLL, app=app)[0] for _ in range(3)]

    assert statuses == [200, 200, 429]


def test_a_pending_machine_is_never_kept(db, app, settings):
    settings.DEVICE_APPROVAL_REQUIRED = True
    path = "/esp32/commands/ESP32_0A0B0C0D0E0F"
    call(path, app=app)  # registers it, pending

    with CaptureQueriesContext(connection) as captured:
        assert call(path, app=app)[0] == 200

    assert len(captured) >= 1


def test_with_the_cache_seconds_at_zero_every_poll_reads(online_device, app, settings):
    settings.DEVICE_POLL_CACHE_SECONDS = 0

    assert [polled(app)[2] for _ in range(3)] == [1, 1, 1]


@pytest.fixture
def redis_cache(settings):
    """The shared cache of a multi-worker deployment (Redis), under a key prefix of its own;
    this process listens to the machines' announcements there."""
    from tests.scratch.net import wait_for
    from tests.test_throttling import use_redis_cache

    cache = use_redis_cache(settings)
    wait_for(lambda: poll_cache.topic.listening, what="the announcements' subscription")
    yield cache
    poll_cache.topic.stop()
    cache.clear()


def test_with_redis_a_command_another_worker_queued_is_delivered_at_the_next_poll(
    online_device, app, redis_cache
):
    import redis

    from tests.scratch.net import wait_for
    from tests.test_throttling import REDIS_URL

    polled(app)
    assert polled(app)[2] == 0  # kept by this worker
    # Another worker queues a vend: its row, and its announcement through Redis (this
    # process' own copy is left as it was, as another process could not touch it).
    now = timezone.now()
    Command.objects.bulk_create(
        [
            Command(
                device=online_device,
                kind=CommandKind.VEND,
                slot=5,
                created_at=now,
                expires_at=now + timedelta(seconds=30),
            )
        ]
    )
    channel = redis_cache.make_key("broadcast.devices.poll")
    assert redis.Redis.from_url(REDIS_URL).publish(channel, DEVICE_ID) == 1  # we listen
    wait_for(lambda: poll_cache.cached(DEVICE_ID) is None, what="the announcement")

    status, content, queries = polled(app)

    assert status == 200 and json.loads(content)["slot"] == 5
    assert queries >= 1


def test_with_redis_a_kept_idle_poll_makes_no_redis_command_and_no_query(
    online_device, app, redis_cache
):
    from unittest import mock

    from redis import Redis

    polled(app)  # connections made, the script loaded, the machine kept
    commands = []
    send = Redis.execute_command

    def recording(redis, *args, **options):
        commands.append(args[0])
        return send(redis, *args, **options)

    with mock.patch.object(Redis, "execute_command", recording):
        assert polled(app) == (200, b"null", 0)
    assert "EVALSHA" not in commands  # counted in memory, added by the flusher later


def test_a_lost_subscription_drops_what_was_kept_and_keeps_nothing_until_it_is_back(
    online_device, app, redis_cache
):
    polled(app)
    assert polled(app)[2] == 0
    epoch = poll_cache.topic.epoch

    poll_cache.topic.stop()  # as when the connection to Redis breaks

    assert poll_cache.topic.epoch > epoch
    assert poll_cache.cached(DEVICE_ID) is None
    assert polled(app)[2] == 1  # read; the subscription is being made again


def test_an_announcement_during_the_read_keeps_the_read_out(online_device, settings):
    from devices.selectors import device_for_poll

    token = poll_cache.begin()
    device = device_for_poll(DEVICE_ID)
    poll_cache.topic.publish([DEVICE_ID])  # a change committed while the row was read

    poll_cache.remember(device, token)

    assert poll_cache.cached(DEVICE_ID) is None
    poll_cache.remember(device_for_poll(DEVICE_ID), poll_cache.begin())
    assert poll_cache.cached(DEVICE_ID) is not None


def test_with_the_throttles_off_the_machine_is_still_kept(online_device, app, settings):
    settings.DEVICE_THROTTLE = ""
    settings.DEVICE_ADDRESS_THROTTLE = ""

    assert [polled(app)[2] for _ in range(3)] == [1, 0, 0]


def test_with_the_cache_unreachable_every_poll_reads_the_database(online_device, app, settings):
    from tests.scratch.net import free_port

    settings.CACHES = {
        "default": {
            "BACKEND": "vending_site.backends.cache.FailOpenRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nobody listens there
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }

    answers = [polled(app) for _ in range(3)]

    assert answers == [(200, b"null", 1)] * 3  # answered, throttles open, nothing kept
