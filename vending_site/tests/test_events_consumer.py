"""``/ws/events/``: who may listen, and that every event reaches the page, from any process."""

import asyncio
import json
import logging

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.db import transaction

from tests.factories import UserFactory
from tests.integration.websocket import OP_CLOSE, OP_TEXT, WebSocket
from tests.scratch.children import start_command, start_server, stop
from tests.scratch.net import free_port, wait_http
from vending_site.live.consumers import (
    CATCH_UP_LIMIT,
    CLOSE_ABUSE,
    CLOSE_FORBIDDEN,
    MAX_BAD_FRAMES,
    EventsConsumer,
)
from vending_site.live.events import layer_crosses_processes, publish
from vending_site.models import LiveEvent

pytestmark = pytest.mark.django_db(transaction=True)


def listen(user):
    communicator = WebsocketCommunicator(EventsConsumer.as_asgi(), "/ws/events/")
    communicator.scope["user"] = user
    return communicator


async def _await(coroutine):
    return await coroutine


def run(coroutine):
    return async_to_sync(_await)(coroutine)


def test_anonymous_visitors_are_refused_unless_the_dashboard_is_public(settings):
    async def attempt():
        communicator = listen(AnonymousUser())
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    settings.DASHBOARD_PUBLIC = False
    assert run(attempt()) == (False, CLOSE_FORBIDDEN)
    settings.DASHBOARD_PUBLIC = True
    assert run(attempt())[0] is True


def test_a_non_staff_user_is_refused(settings):
    settings.DASHBOARD_PUBLIC = False
    user = UserFactory()

    async def attempt():
        communicator = listen(user)
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    assert run(attempt()) == (False, CLOSE_FORBIDDEN)


def test_an_event_committed_in_this_process_is_pushed_to_staff():
    staff = UserFactory(is_staff=True, is_superuser=True)

    async def scenario():
        communicator = listen(staff)
        assert (await communicator.connect())[0]
        await asyncio.to_thread(publish_committed, "transaction", {"id": "t-1", "state": "sent"})
        message = await communicator.receive_json_from(timeout=2)
        await communicator.disconnect()
        return message

    message = run(scenario())
    assert message["kind"] == "transaction"
    assert message["payload"] == {"id": "t-1", "state": "sent"}
    assert message["id"] == LiveEvent.objects.get().pk


def test_a_rolled_back_change_never_reaches_the_page():
    staff = UserFactory(is_staff=True, is_superuser=True)

    def publish_then_roll_back():
        try:
            with transaction.atomic():
                publish("transaction", {"id": "ghost"})
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        publish_committed("transaction", {"id": "real"})

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        await asyncio.to_thread(publish_then_roll_back)
        message = await communicator.receive_json_from(timeout=2)
        nothing_else = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return message, nothing_else

    message, nothing_else = run(scenario())
    assert message["payload"] == {"id": "real"}
    assert nothing_else


@pytest.mark.system
def test_an_event_from_another_process_arrives_within_a_second():
    staff = UserFactory(is_staff=True, is_superuser=True)

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        process = start_command(
            "shell",
            "-c",
            "from vending_site.live.events import publish; "
            "publish('log', {'message': 'from cron'})",
        )
        await asyncio.to_thread(process.wait, 30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        message = await communicator.receive_json_from(timeout=3)
        waited = loop.time() - started
        await communicator.disconnect()
        return process, message, waited

    process, message, waited = run(scenario())
    assert stop(process)[0] == 0
    assert message["kind"] == "log"
    assert message["payload"] == {"message": "from cron"}
    assert waited < 1.0


def test_a_page_that_reconnects_catches_up_on_what_it_missed():
    staff = UserFactory(is_staff=True, is_superuser=True)
    publish_committed("stock", {"n": 0})
    seen = LiveEvent.objects.get().pk
    for n in range(1, 4):
        publish_committed("stock", {"n": n})

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        await communicator.send_json_to({"type": "catch_up", "since": seen})
        messages = [await communicator.receive_json_from(timeout=2) for _ in range(3)]
        nothing_else = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return messages, nothing_else

    messages, nothing_else = run(scenario())
    assert [m["payload"]["n"] for m in messages] == [1, 2, 3]
    assert nothing_else


def test_a_page_that_missed_too_much_is_told_to_reload():
    staff = UserFactory(is_staff=True, is_superuser=True)
    LiveEvent.objects.bulk_create(
        LiveEvent(kind="log", payload={"n": n}) for n in range(CATCH_UP_LIMIT + 5)
    )

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        await communicator.send_json_to({"type": "catch_up", "since": 0})
        message = await communicator.receive_json_from(timeout=2)
        await communicator.disconnect()
        return message

    message = run(scenario())
    assert message["type"] == "reset"
    assert message["last_id"] == LiveEvent.objects.order_by("-id").first().pk


@pytest.mark.parametrize(
    "sent",
    [
        {"type": "nonsense"},
        {"type": "catch_up", "since": "x"},
        {"type": "catch_up", "since": -1},
        [1, 2],
    ],
)
def test_a_malformed_message_gets_an_error_not_a_dropped_socket(sent):
    staff = UserFactory(is_staff=True, is_superuser=True)

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        await communicator.send_json_to(sent)
        message = await communicator.receive_json_from(timeout=2)
        await communicator.disconnect()
        return message

    assert run(scenario())["type"] == "error"


UNREADABLE_FRAMES = {
    "not JSON": {"text_data": "catch up please"},
    "a huge frame": {"text_data": json.dumps({"type": "catch_up", "pad": "x" * 100_000})},
    "a deeply nested array": {"text_data": "[" * 100_000},
    "a nested array under the size bound": {"text_data": "[" * 2000 + "]" * 2000},
    "a binary frame": {"bytes_data": b"\x00\x01"},
}


@pytest.mark.parametrize("frame", UNREADABLE_FRAMES.values(), ids=UNREADABLE_FRAMES.keys())
def test_an_unreadable_frame_gets_an_error_and_the_socket_stays_open(frame, caplog):
    staff = UserFactory(is_staff=True, is_superuser=True)

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        await communicator.send_to(**frame)
        refused = await communicator.receive_json_from(timeout=2)
        await communicator.send_json_to({"type": "nonsense"})
        still_answered = await communicator.receive_json_from(timeout=2)
        await communicator.disconnect()
        return refused, still_answered

    with caplog.at_level(logging.WARNING):
        refused, still_answered = run(scenario())
    assert refused["type"] == "error"
    assert refused["detail"]
    assert still_answered["type"] == "error"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_sender_that_keeps_sending_unreadable_frames_is_closed_with_1008():
    staff = UserFactory(is_staff=True, is_superuser=True)

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        for _ in range(MAX_BAD_FRAMES):
            await communicator.send_to(text_data="{")
            assert (await communicator.receive_json_from(timeout=2))["type"] == "error"
        closed = await communicator.receive_output(timeout=2)
        await communicator.disconnect()
        return closed

    assert run(scenario()) == {"type": "websocket.close", "code": CLOSE_ABUSE}


@pytest.mark.system
def test_the_server_answers_unreadable_frames_without_logging_a_traceback():
    port = free_port()
    server = start_server(
        port,
        DASHBOARD_PUBLIC="true",
        LOG_LEVEL="INFO",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=server)
        socket = WebSocket(port)
        assert socket.status == 101
        answers = []
        for text in ("not json", "[" * 100_000, "[" * 2000 + "]" * 2000):
            socket.send(text)
            answers.append(socket.receive())
        socket.send(json.dumps({"type": "catch_up", "since": 0}))
        socket.send(b"\x03\xe8", opcode=OP_CLOSE)
        socket.close()
    finally:
        code, output = stop(server)
    assert [opcode for opcode, _ in answers] == [OP_TEXT] * 3
    assert all(json.loads(payload)["type"] == "error" for _, payload in answers)
    assert code == 0, output
    assert "Traceback" not in output, output
    assert '"level": "error"' not in output, output


def publish_committed(kind: str, payload: dict) -> None:
    with transaction.atomic():
        publish(kind, payload)


REDIS_URL = "redis://127.0.0.1:6379/3"


def redis_available() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_layer(settings):
    """Channels' Redis layer on REDIS_URL, as a deployment with Redis has it."""
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }


@pytest.mark.system
def test_with_redis_an_event_from_another_process_is_pushed_not_tailed(redis_layer):
    staff = UserFactory(is_staff=True, is_superuser=True)

    async def scenario():
        communicator = listen(staff)
        await communicator.connect()
        process = start_command(
            "shell",
            "-c",
            "from vending_site.live.events import publish; publish('device', {'device_id': 'X'})",
            REDIS_URL=REDIS_URL,
        )
        await asyncio.to_thread(process.wait, 30)
        message = await communicator.receive_json_from(timeout=3)
        await communicator.disconnect()
        return process, message

    assert layer_crosses_processes()  # so the consumer does not tail: Redis carried it
    process, message = run(scenario())
    assert stop(process)[0] == 0
    assert message["payload"] == {"device_id": "X"}


@pytest.mark.system
def test_with_redis_a_refused_socket_never_waits_on_the_channel_layer(
    redis_layer, settings, monkeypatch
):
    """The refusal is sent and the application returns without taking a channel: the
    server's 403 does not wait for a cancelled layer receive (nor costs a Redis call)."""
    from channels_redis.core import RedisChannelLayer

    settings.DASHBOARD_PUBLIC = False
    channels_taken = []
    new_channel = RedisChannelLayer.new_channel

    async def counted(layer, *args, **kwargs):
        channels_taken.append(args)
        return await new_channel(layer, *args, **kwargs)

    monkeypatch.setattr(RedisChannelLayer, "new_channel", counted)

    async def attempt(user):
        communicator = listen(user)
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    assert run(attempt(AnonymousUser())) == (False, CLOSE_FORBIDDEN)
    assert channels_taken == []
    assert run(attempt(UserFactory(is_staff=True, is_superuser=True)))[0] is True
    assert len(channels_taken) == 1  # the layer is used, by the socket it accepted
