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

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from vending_site.backends.outages import Breaker
from vending_site.live import layer_sender

logger = logging.getLogger(__name__)

EVENTS_GROUP = "vending.events"
_push_breaker = Breaker()


# The events of the innermost open batch (see batched()), with the savepoints open at its start.
_batch: ContextVar[tuple[list, tuple] | None] = ContextVar("live_event_batch", default=None)


def publish(kind: str, payload: dict[str, Any]) -> None:
    """Record ``payload`` as a ``kind`` event; push it to live pages after commit."""
    from vending_site.models import LiveEvent

    batch = _batch.get()
    if batch is not None and _savepoints() == batch[1]:
        batch[0].append(LiveEvent(kind=kind, payload=payload))  # written when the batch ends
        return
    event = LiveEvent.objects.create(kind=kind, payload=payload)
    transaction.on_commit(lambda: _push(event.as_message()))


def publish_many(kind: str, payloads: list[dict[str, Any]]) -> None:
    """:func:`publish` for many events of one kind: one INSERT for all the outbox rows and,
    after commit, one channel-layer message for all the pushes (the discovery recorder
    writes its exchanges in batches of up to 200)."""
    from vending_site.models import LiveEvent

    if not payloads:
        return
    events = LiveEvent.objects.bulk_create([LiveEvent(kind=kind, payload=p) for p in payloads])
    messages = [event.as_message() for event in events]
    transaction.on_commit(lambda: _push_many(messages))


@contextmanager
def batched() -> Iterator[None]:
    """Write the events published inside the block to the outbox in one INSERT at its end,
    still inside the database transaction, and push them to live pages together in one
    channel layer message after commit (a vend publishes three).

    Use it inside a ``transaction.atomic`` block, around code that lets its exceptions out:
    if the block raises, its events are neither written nor pushed (the transaction rolls
    back anyway). An event published inside a savepoint opened within the block is written
    and pushed on its own, as without the batch, so a savepoint rolled back inside the block
    never pushes what it undid.
    """
    from vending_site.models import LiveEvent

    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("events.batched() outside transaction.atomic")
    events: list = []
    token = _batch.set((events, _savepoints()))
    try:
        yield
    finally:
        _batch.reset(token)
    # Reached only when the block did not raise.
    if not events:
        return
    if connection.features.can_return_rows_from_bulk_insert:
        LiveEvent.objects.bulk_create(events)  # ids come back, in order
    else:  # pragma: no cover - every database we support returns them
        for event in events:
            event.save()
    transaction.on_commit(lambda: _push_many([event.as_message() for event in events]))


def _savepoints() -> tuple:
    # An atomic block opened with savepoint=False counts as None: it cannot be rolled back
    # on its own (a failure in it dooms the whole transaction), so it changes nothing here.
    return tuple(sid for sid in transaction.get_connection().savepoint_ids if sid is not None)


def layer_crosses_processes() -> bool:
    """Whether the channel layer reaches other processes (Redis), or only this one."""
    return not isinstance(get_channel_layer(), InMemoryChannelLayer)


def prune_live_events(*, now=None) -> int:
    from vending_site.models import LiveEvent

    cutoff = (now or timezone.now()) - timedelta(seconds=settings.LIVE_EVENT_RETENTION)
    deleted, _ = LiveEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def _push(message: dict[str, Any]) -> None:
    _push_many([message])


def _push_many(messages: list[dict[str, Any]]) -> None:
    if not layer_crosses_processes():
        return  # sockets tail the outbox instead (see vending_site.live.consumers)
    layer = get_channel_layer()
    if layer is None:
        return
    if not _push_breaker.allows():
        return  # Redis failed a moment ago: pages catch up from the outbox when it is back
    if len(messages) == 1:
        message = {"type": "vending.event", "event": messages[0]}
    else:
        message = {"type": "vending.events", "events": messages}
    try:
        layer_sender.run(layer.group_send(EVENTS_GROUP, message), timeout=settings.REDIS_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a live page is never worth a failed vend
        # Not retried for REDIS_RETRY_AFTER seconds: a Redis that hangs would otherwise cost
        # every change REDIS_TIMEOUT, inside the request that made it.
        _push_breaker.trip(settings.REDIS_RETRY_AFTER)
        kinds = ", ".join(m["kind"] for m in messages)
        logger.warning("could not push %s event: %s", kinds, exc)
