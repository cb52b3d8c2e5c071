"""Events for live pages: one outbox row per change, pushed after the database commits.

Every process (web worker, serial bridge, discovery listener, cron command) calls
:func:`publish` inside its own transaction. The outbox row (:class:`LiveEvent`) commits or
rolls back with the change, so a page never shows a vend that was rolled back, and nothing
is lost when no page is watching. After commit the event is also pushed to the channel
layer's group when that layer is Redis, which reaches every process at once; without Redis,
open sockets find it by tailing the outbox.
A channel layer that is down must not break a vend, so push failures are logged and
swallowed, and pushes pause for ``REDIS_RETRY_AFTER`` seconds after one.
"""

import asyncio
import logging
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .outages import Breaker

logger = logging.getLogger(__name__)

EVENTS_GROUP = "vending.events"
_push_breaker = Breaker()


def publish(kind: str, payload: dict[str, Any]) -> None:
    """Record ``payload`` as a ``kind`` event; push it to live pages after commit."""
    from .models import LiveEvent

    event = LiveEvent.objects.create(kind=kind, payload=payload)
    transaction.on_commit(lambda: _push(event.as_message()))


def publish_many(kind: str, payloads: list[dict[str, Any]]) -> None:
    """:func:`publish` for a batch: one INSERT for all the outbox rows, and after commit one
    round trip to the channel layer for all the pushes (a per-event push costs a thread, an
    event loop and a Redis connection each, which a busy recorder cannot afford)."""
    from .models import LiveEvent

    if not payloads:
        return
    events = LiveEvent.objects.bulk_create([LiveEvent(kind=kind, payload=p) for p in payloads])
    messages = [event.as_message() for event in events]
    transaction.on_commit(lambda: _push(*messages))


def layer_crosses_processes() -> bool:
    """Whether the channel layer reaches other processes (Redis), or only this one."""
    return not isinstance(get_channel_layer(), InMemoryChannelLayer)


def prune_live_events(*, now=None) -> int:
    from .models import LiveEvent

    cutoff = (now or timezone.now()) - timedelta(seconds=settings.LIVE_EVENT_RETENTION)
    deleted, _ = LiveEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def _push(*messages: dict[str, Any]) -> None:
    if not layer_crosses_processes():
        return  # sockets tail the outbox instead (see vending_site.consumers)
    layer = get_channel_layer()
    if layer is None:
        return
    if not _push_breaker.allows():
        return  # Redis failed a moment ago: pages catch up from the outbox when it is back
    try:
        async_to_sync(_bounded_group_send)(
            layer, [{"type": "vending.event", "event": message} for message in messages]
        )
    except Exception as exc:  # noqa: BLE001 - a live page is never worth a failed vend
        # Not retried for REDIS_RETRY_AFTER seconds: a Redis that hangs would otherwise cost
        # every change REDIS_TIMEOUT, inside the request that made it.
        _push_breaker.trip(settings.REDIS_RETRY_AFTER)
        logger.warning("could not push %s event: %s", messages[0]["kind"], exc)


async def _bounded_group_send(layer, messages: list[dict[str, Any]]) -> None:
    async def send_all() -> None:
        for message in messages:  # in order: a page shows the log as it was written
            await layer.group_send(EVENTS_GROUP, message)

    await asyncio.wait_for(send_all(), settings.REDIS_TIMEOUT)
