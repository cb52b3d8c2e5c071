"""The event types and :func:`emit`, which puts one event in the outbox."""

from typing import Any

from django.utils import timezone

from .models import Delivery, Endpoint, Message

# What integrators and channels can subscribe to (docs/alerts.md says when each is sent).
EVENT_TYPES: dict[str, str] = {
    "vend.succeeded": "A vend came out (the machine confirmed, or staff settled it so).",
    "vend.failed": "A vend did not come out; its unit went back to the slot.",
    "vend.unconfirmed": "A vend was sent and never confirmed: a person must settle it.",
    "vend.resolved": "An unconfirmed vend was settled (data.state says how).",
    "vend.expired": "A queued vend was never picked up by its machine.",
    "vend.cancelled": "A queued vend was cancelled before it was sent.",
    "stock.low": "A slot reached its low-stock threshold.",
    "stock.empty": "A slot is empty.",
    "machine.offline": "A machine has not been heard from for longer than the offline rule allows.",
    "machine.online": "A machine that was offline is heard from again.",
    "alert.opened": "An alert opened (or is reminded of after its cooldown).",
    "alert.resolved": "An alert was resolved (its condition cleared, or staff resolved it).",
}


def emit(
    event_type: str,
    data: dict[str, Any],
    *,
    subject: str = "",
    tags: dict[str, Any] | None = None,
) -> Message | None:
    """Put ``event_type`` in the outbox for every endpoint that takes it; call it inside the
    database transaction of the change it reports, so both commit or neither does.

    ``data`` is the JSON the receiver gets; ``subject`` names what it is about (``vend:<id>``,
    ``machine:<device_id>``) and ``tags`` what endpoints filter on (``location``, ``route``,
    ``rule``, ``device``). Costs one read when nobody subscribes; a message and its deliveries
    (two INSERTs) when somebody does. Returns the message, or None when nobody takes it.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    tags = tags or {}
    endpoints = [
        endpoint
        for endpoint in Endpoint.objects.filter(is_active=True).only(
            "id", "is_active", "event_types", "filters"
        )
        if endpoint.accepts(event_type, tags)
    ]
    if not endpoints:
        return None
    now = timezone.now()
    message = Message.objects.create(
        event_type=event_type, subject=subject[:100], data=data, tags=tags, created_at=now
    )
    Delivery.objects.bulk_create(
        [
            Delivery(message=message, endpoint=endpoint, next_attempt_at=now, created_at=now)
            for endpoint in endpoints
        ]
    )
    return message
