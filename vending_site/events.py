"""Events for live pages: published to the channel layer after the database commits.

Every process (web worker, serial bridge, discovery listener, cron command) calls
:func:`publish` inside its own transaction; the message leaves only once that transaction
has committed, so a page never shows a vend that was rolled back. A channel layer that is
down must not break a vend, so delivery failures are logged and swallowed.
"""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

EVENTS_GROUP = "vending.events"


def publish(kind: str, payload: dict[str, Any]) -> None:
    """Send ``{"kind": kind, "payload": payload}`` to the events group after commit."""
    transaction.on_commit(lambda: _send(kind, payload))


def _send(kind: str, payload: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            EVENTS_GROUP, {"type": "vending.event", "kind": kind, "payload": payload}
        )
    except Exception:  # a live page is never worth a failed vend
        logger.warning("could not publish %s event", kind, exc_info=True)
