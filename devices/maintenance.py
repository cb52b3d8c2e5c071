"""Housekeeping of the machines' data that grows without bound: the communication log and
machines that announced themselves and were never approved (idempotency keys are the vend
layer's: ``transactions.services.prune_idempotency_keys``).

Run from cron (``manage.py prune_logs``) beside the live server: every delete is by
primary key in bounded batches, so no long lock is held and two runs may overlap.
"""

import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .access import pending_devices
from .models import CommunicationLog, Device

DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 10_000
MAX_AGE = timedelta(days=36_500)

# Each unit says what it is: "m" (minutes or months?) is refused, not guessed.
_UNITS = {
    "s": timedelta(seconds=1),
    "min": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "mo": timedelta(days=30),
}
_DURATION = re.compile(r"(\d{1,9})(s|min|h|d|w|mo)")
AGE_FORMS = "30s, 15min, 12h, 7d, 2w or 1mo (30 days)"


def parse_age(text: str) -> timedelta:
    """An age such as ``30s``, ``15min``, ``12h``, ``7d``, ``2w`` or ``1mo`` (30 days) as a
    positive timedelta; else ``ValueError`` saying why (``m`` alone is ambiguous)."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+m", cleaned):
        raise ValueError(
            f"{text.strip()!r} is ambiguous: write {cleaned[:-1]}min for minutes or "
            f"{cleaned[:-1]}mo for months"
        )
    match = _DURATION.fullmatch(cleaned)
    if match is None:
        raise ValueError(f"not an age: {text!r}")
    age = int(match.group(1)) * _UNITS[match.group(2)]
    if not timedelta(0) < age <= MAX_AGE:
        raise ValueError(f"age out of range: {text!r}")
    return age


def old_communication_log(*, before: datetime) -> QuerySet[CommunicationLog]:
    return CommunicationLog.objects.filter(created_at__lt=before)


def prune_communication_log(
    *,
    before: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    time_limit: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete log entries created before ``before``; returns how many this call deleted.

    Each batch selects up to ``batch_size`` ids and deletes those ids, in its own short
    statement (autocommit), so the table is never locked for long. A concurrent run that
    deleted the same ids first only lowers our count. The work is bounded: at most the
    batches needed for the rows old at the start (plus one), and, with ``time_limit``,
    no new batch starts after that many seconds; whatever is left goes in the next run.
    ``progress(deleted so far, old rows at the start)`` is called after each batch.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    started = time.monotonic()
    old = old_communication_log(before=before)
    total = old.count()
    max_batches = total // batch_size + 1
    deleted = 0
    for _batch in range(max_batches):
        if time_limit is not None and time.monotonic() - started >= time_limit:
            break
        ids = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        count, _ = CommunicationLog.objects.filter(pk__in=ids).delete()
        deleted += count
        if progress is not None:
            progress(deleted, total)
        if len(ids) < batch_size:
            break
    return deleted


def prune_pending_devices(*, now: datetime | None = None) -> int:
    """Delete WiFi machines that were never approved and have not been heard from for
    ``DEVICE_PENDING_PRUNE_HOURS``; returns how many. A machine with slots or commands (one
    approved once, then revoked) is history and is kept."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.DEVICE_PENDING_PRUNE_HOURS)
    stale = (
        pending_devices()
        .filter(approved_at__isnull=True, slots__isnull=True, commands__isnull=True)
        .exclude(last_seen__gte=cutoff)
        .exclude(registered_at__gte=cutoff)
    )
    ids = list(stale.values_list("pk", flat=True)[:MAX_BATCH_SIZE])
    # The filter again at the delete: a machine approved (or given slots) since the read
    # is no longer stale and must survive.
    deleted = stale.filter(pk__in=ids).delete()[1].get(Device._meta.label, 0)
    return deleted
