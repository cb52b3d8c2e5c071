from django.db import models
from django.utils import timezone


class LiveEvent(models.Model):
    """One event for live pages, written in the same database transaction as the change.

    The outbox is how a page learns of changes made in any process: without Redis each open
    socket tails it; with Redis events are pushed and the outbox lets a page that reconnects
    catch up on what it missed. Rows are short-lived (``LIVE_EVENT_RETENTION``).
    """

    kind = models.CharField(max_length=20)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"

    def as_message(self) -> dict:
        return {
            "id": self.pk,
            "kind": self.kind,
            "payload": self.payload,
            "at": self.created_at.isoformat(),
        }
