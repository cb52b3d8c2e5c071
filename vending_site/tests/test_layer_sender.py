"""Pushes to the channel layer from synchronous code share one event loop per process."""

import threading
import uuid

import pytest

from vending_site.live import events, layer_sender
from vending_site.tests.test_events_consumer import redis_available

REDIS_URL = "redis://127.0.0.1:6379/3"


def test_sends_run_on_one_thread_and_loop_for_the_life_of_the_process():
    seen = []

    async def where():
        import asyncio

        seen.append((threading.current_thread().name, id(asyncio.get_running_loop())))
        return len(seen)

    assert [layer_sender.run(where(), timeout=2) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert len(set(seen)) == 1
    assert seen[0][0] == "channel-layer-sender"


def test_a_send_that_outlasts_its_timeout_raises_and_is_cancelled():
    import asyncio

    state = {}

    async def hung():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    with pytest.raises(TimeoutError):
        layer_sender.run(hung(), timeout=0.1)
    layer_sender.run(asyncio.sleep(0.05), timeout=2)  # the loop ran the cancellation meanwhile
    assert state == {"cancelled": True}


def test_with_redis_live_events_reach_the_group_over_one_reused_connection(settings):
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"t{uuid.uuid4().hex[:8]}"},
        }
    }
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.EVENTS_GROUP, channel)
    events._push_breaker.reset()
    threads = []
    send = type(layer).group_send

    async def recording(self, group, message):
        threads.append(threading.current_thread().name)
        return await send(self, group, message)

    from unittest import mock

    with mock.patch.object(type(layer), "group_send", recording):
        for n in range(5):
            events._push({"kind": "device", "id": n})

    async def receive_five():
        return [(await layer.receive(channel))["event"]["id"] for _ in range(5)]

    assert async_to_sync(receive_five)() == [0, 1, 2, 3, 4]
    assert set(threads) == {"channel-layer-sender"}
