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


class ServiceHeartbeat(models.Model):
    """The last sign of life of one long-running process (discovery, serial bridge, sweeper).

    One row per service name, written by :mod:`vending_site.processes.heartbeat`: the process
    records
    its start, touches ``beat_at`` every ``SERVICE_HEARTBEAT_SECONDS`` and stamps
    ``stopped_at`` when it shuts down cleanly. A process that dies without a word is seen as
    stopped once its heartbeat is stale.
    """

    name = models.CharField(max_length=40, unique=True)
    pid = models.PositiveIntegerField()
    host = models.CharField(max_length=255)
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid} on {self.host})"


# The alerts' and the outbound messages' models live with their code (vending_site.alerts,
# vending_site.notify); VendingSiteConfig.import_models loads them with this module's. Not
# imported here: alerts and notify read this module (heartbeats, live events), and a
# package must not import a sibling that imports it back (.importlinter).
