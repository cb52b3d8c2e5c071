"""Reads of vends."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .models import IdempotencyKey


def expired_idempotency_keys(*, now: datetime | None = None) -> QuerySet[IdempotencyKey]:
    """Keys older than ``IDEMPOTENCY_KEY_TTL``: a retry with one of them is a new vend."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL)
    return IdempotencyKey.objects.filter(created_at__lt=cutoff)
