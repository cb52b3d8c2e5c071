"""Housekeeping of the machines' data that grows without bound: the communication log and
machines that announced themselves and were never approved (idempotency keys are the vend
layer's: ``transactions.services.prune_idempotency_keys``).

Run from cron (``manage.py prune_logs``) beside the live server: every delete is by
primary key in bounded batches, so no long lock is held and two runs may overlap.
"""

import re
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .access import pending_devices
from .models import CommunicationLog, Device

DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 10_000
MAX_AGE = timedelta(days=36_500)

_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_DURATION = re.compile(r"(\d{1,9})([dhms])")


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``3600s`` as a positive timedelta; else ``ValueError``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    age = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if not timedelta(0) < age <= MAX_AGE:
        raise ValueError(f"duration out of range: {text!r}")
    return age


def old_communication_log(*, before: datetime) -> QuerySet[CommunicationLog]:
    return CommunicationLog.objects.filter(created_at__lt=before)


def prune_communication_log(
    *,
    before: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    time_limit: float | None = None,
) -> int:
    """Delete log entries created before ``before``; returns how many this call deleted.

    Each batch selects up to ``batch_size`` ids and deletes those ids, in its own short
    statement (autocommit), so the table is never locked for long. A concurrent run that
    deleted the same ids first only lowers our count. The work is bounded: at most the
    batches needed for the rows old at the start (plus one), and, with ``time_limit``,
    no new batch starts after that many seconds; whatever is left goes in the next run.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    started = time.monotonic()
    old = old_communication_log(before=before)
    max_batches = old.count() // batch_size + 1
    deleted = 0
    for _batch in range(max_batches):
        if time_limit is not None and time.monotonic() - started >= time_limit:
            break
        ids = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        count, _ = CommunicationLog.objects.filter(pk__in=ids).delete()
        deleted += count
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
