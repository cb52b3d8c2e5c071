"""The delivery queue: claiming due deliveries, recording each try, retrying, replaying.

A delivery is claimed with a lease (``claimed_by``/``claimed_until``) in a conditional UPDATE
that only a row nobody holds can pass, so two notifiers never send one delivery at the same
time; on PostgreSQL the candidates are first read ``FOR UPDATE SKIP LOCKED``, so notifiers
take different rows instead of waiting on each other. A notifier that dies holding a lease
loses nothing: once ``claimed_until`` passes the row is due again and sent again (at least
once; receivers deduplicate by ``webhook-id``).
"""

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from vending_site.observability.logging import get_logger

from . import metrics, signals
from .models import Delivery, DeliveryAttempt, DeliveryState, Endpoint, Message
from .sending import ERROR_LENGTH, Outcome

logger = get_logger(__name__)

CANDIDATES_PER_SLOT = 4  # rows read per free slot: some are skipped for a busy endpoint


def backoff_seconds(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: exponential with full
    jitter, uniform in ``[0, min(cap, base * 2**(attempts-1))]``, so receivers that failed
    together are not retried together."""
    ceiling = min(
        settings.NOTIFY_BACKOFF_CAP, settings.NOTIFY_BACKOFF_BASE * 2 ** min(attempts - 1, 30)
    )
    return random.uniform(0, max(ceiling, 0.0))


def _free_delivery(now: datetime) -> Q:
    return Q(state=DeliveryState.PENDING, next_attempt_at__lte=now) & (
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )


@dataclass(frozen=True)
class Claim:
    """Deliveries one notifier holds until ``until``, under the token ``token``."""

    token: str
    until: datetime
    deliveries: list[Delivery]


def claim_due(
    *, worker: str, limit: int, busy: dict[int, int] | None = None, per_endpoint: int = 0
) -> Claim:
    """Lease up to ``limit`` due deliveries to ``worker``, oldest due first, leaving an
    endpoint at most ``per_endpoint`` in flight counting the ``busy`` ones (endpoint id →
    deliveries already being sent). Deliveries come with their message and endpoint."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.NOTIFY_LEASE_SECONDS)
    token = f"{worker[:60]}:{uuid.uuid4().hex[:16]}"
    busy = dict(busy or {})
    per_endpoint = per_endpoint or settings.NOTIFY_PER_ENDPOINT
    if limit <= 0:
        return Claim(token, until, [])
    saturated = [endpoint for endpoint, count in busy.items() if count >= per_endpoint]
    due = Delivery.objects.filter(_free_delivery(now)).exclude(endpoint_id__in=saturated)
    # A plain read first: an idle notifier looks four times a second, and a claim's
    # transaction takes SQLite's write lock (IMMEDIATE) from its start.
    if not due.exists():
        return Claim(token, until, [])
    with transaction.atomic():
        candidates = due.order_by("next_attempt_at", "id").values_list("id", "endpoint_id")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        chosen = []
        for delivery_id, endpoint_id in candidates[: limit * CANDIDATES_PER_SLOT]:
            if busy.get(endpoint_id, 0) >= per_endpoint:
                continue
            busy[endpoint_id] = busy.get(endpoint_id, 0) + 1
            chosen.append(delivery_id)
            if len(chosen) >= limit:
                break
        if not chosen:
            return Claim(token, until, [])
        # The condition again: on SQLite (no row locks) another notifier may have got there.
        Delivery.objects.filter(_free_delivery(now), id__in=chosen).update(
            claimed_by=token, claimed_until=until
        )
    deliveries = list(
        Delivery.objects.filter(id__in=chosen, claimed_by=token)
        .select_related("message", "endpoint")
        .order_by("next_attempt_at", "id")
    )
    return Claim(token, until, deliveries)


def record_outcome(
    *,
    delivery: Delivery,
    token: str,
    outcome: Outcome,
    started_at: datetime,
    duration_ms: int,
    worker: str = "",
) -> str:
    """Write the attempt and move the delivery: delivered on success; pending again after a
    backoff, or failed after ``NOTIFY_MAX_ATTEMPTS`` tries. Returns ``delivered``, ``retry``,
    ``failed``, or ``lost`` when the lease was no longer ``token``'s (the attempt is still
    recorded: the message did go out)."""
    now = timezone.now()
    attempts = delivery.attempts + 1
    if outcome.ok:
        result, next_at = "delivered", None
    elif attempts >= settings.NOTIFY_MAX_ATTEMPTS:
        result, next_at = "failed", None
    else:
        result, next_at = "retry", now + timedelta(seconds=backoff_seconds(attempts))
    changes = {
        "attempts": F("attempts") + 1,
        "last_status": outcome.status,
        "last_error": outcome.error[:ERROR_LENGTH],
        "claimed_by": "",
        "claimed_until": None,
    }
    if result == "delivered":
        changes.update(state=DeliveryState.DELIVERED, delivered_at=now)
    elif result == "failed":
        changes.update(state=DeliveryState.FAILED)
    else:
        changes.update(next_attempt_at=next_at)
    with transaction.atomic():
        # The row lock orders this against a deletion of the endpoint or message
        # (delete_deliveries_of locks the same rows first): a try on a delivery deleted
        # meanwhile is not recorded, and one recorded first is deleted with it.
        if not Delivery.objects.select_for_update().filter(pk=delivery.pk).exists():
            return "lost"
        DeliveryAttempt.objects.create(
            delivery_id=delivery.pk,
            started_at=started_at,
            duration_ms=max(duration_ms, 0),
            status_code=outcome.status,
            error=outcome.error[:ERROR_LENGTH],
            next_attempt_at=next_at,
            worker=worker[:100],
        )
        moved = Delivery.objects.filter(
            pk=delivery.pk, claimed_by=token, state=DeliveryState.PENDING
        ).update(**changes)
    if not moved:
        return "lost"
    metrics.record_delivery(result, created_at=delivery.created_at, delivered_at=now)
    if result == "failed":
        for receiver, error in signals.delivery_failed.send_robust(Delivery, delivery=delivery):
            if error is not None:
                logger.error(
                    "delivery_failed_receiver_error", receiver=str(receiver), error=str(error)
                )
    return result


def replay(delivery: Delivery) -> Delivery:
    """Send ``delivery`` again as soon as a notifier is free, with the same ``webhook-id``.
    Its attempts count starts over, so a failed delivery gets its full retries back. One a
    notifier is sending right now (its lease has not run out) is left to that send: clearing
    the lease would let a second notifier send it at the same time."""
    now = timezone.now()
    in_flight = Q(state=DeliveryState.PENDING, claimed_until__gt=now)
    Delivery.objects.filter(pk=delivery.pk).exclude(in_flight).update(
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=now,
        claimed_by="",
        claimed_until=None,
        delivered_at=None,
    )
    delivery.refresh_from_db()
    return delivery


def prune_delivered(*, now: datetime | None = None, batch: int = 1000) -> int:
    """Delete messages older than ``NOTIFY_RETENTION_DAYS`` none of whose deliveries is still
    pending (their deliveries and attempts go with them). Returns how many messages."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.NOTIFY_RETENTION_DAYS)
    ids = list(
        Message.objects.filter(created_at__lt=cutoff)
        .exclude(deliveries__state=DeliveryState.PENDING)
        .values_list("id", flat=True)[:batch]
    )
    if ids:
        with transaction.atomic():
            lock_deliveries(Delivery.objects.filter(message_id__in=ids))
            Message.objects.filter(id__in=ids).delete()
    return len(ids)


def lock_deliveries(deliveries) -> None:
    """Lock ``deliveries`` before deleting them (or what they belong to), inside the caller's
    transaction, so a notifier recording a try on one waits, then finds it gone, instead of
    adding a try the deletion did not see (a foreign-key error on PostgreSQL)."""
    list(deliveries.select_for_update().order_by("pk").values_list("pk", flat=True))


def pending_count() -> int:
    return Delivery.objects.filter(state=DeliveryState.PENDING).count()


def endpoint_deliveries(endpoint: Endpoint):
    """An endpoint's deliveries, newest first, with their messages and attempts."""
    return (
        Delivery.objects.filter(endpoint=endpoint)
        .select_related("message")
        .prefetch_related("attempt_log")
        .order_by("-created_at", "-id")
    )


@dataclass(frozen=True)
class QueueHealth:
    endpoints: int
    pending: int
    overdue: int  # pending, due over ``OVERDUE_AFTER`` ago and held by no notifier
    failed_last_day: int


OVERDUE_AFTER = timedelta(minutes=1)


def queue_health(*, now: datetime | None = None) -> QueueHealth:
    """What ``check_system`` reports of the outbox (four counts)."""
    now = now or timezone.now()
    pending = Delivery.objects.filter(state=DeliveryState.PENDING)
    return QueueHealth(
        endpoints=Endpoint.objects.filter(is_active=True).count(),
        pending=pending.count(),
        overdue=pending.filter(_free_delivery(now - OVERDUE_AFTER)).count(),
        failed_last_day=Delivery.objects.filter(
            state=DeliveryState.FAILED, created_at__gte=now - timedelta(days=1)
        ).count(),
    )
