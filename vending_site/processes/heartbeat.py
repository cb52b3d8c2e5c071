"""Heartbeats of the long-running processes, so the dashboard can say which ones run.

A process records its start (:func:`record_start`), then touches its row every
``SERVICE_HEARTBEAT_SECONDS`` with one ``UPDATE`` (:func:`record_beat`), and stamps its stop
on a clean shutdown (:func:`record_stop`). Start and stop are state changes and publish a
``service`` live event; beats do not (they would flood every page every few seconds), so a
process that dies without a word is shown stopped by the page itself once its beat is
``STALE_BEATS`` intervals old.

:class:`Heartbeat` runs all of this in a thread of its own: the commands it serves have
their own loops (asyncio, the serial bridge, a sleep loop), and every database call it makes
stays in that thread, outside any event loop. A database that is down costs a beat, never
the process: errors are logged and the next beat tries again.
"""

import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from vending_site.live.events import publish
from vending_site.models import ServiceHeartbeat

logger = logging.getLogger(__name__)

DISCOVERY = "discovery"
SERIAL_BRIDGE = "serial_bridge"
SWEEPER = "sweeper"
NOTIFIER = "notifier"
# The services the dashboard lists, in its order, with the command that runs each.
SERVICES = {
    DISCOVERY: "run_discovery",
    SERIAL_BRIDGE: "run_serial_bridge",
    SWEEPER: "sweep_commands --every",
    NOTIFIER: "run_notifier",
}
STALE_BEATS = 3


class ServiceState:
    RUNNING = "running"
    STOPPED = "stopped"
    NEVER_STARTED = "never_started"


def beat_interval() -> float:
    return max(0.1, float(settings.SERVICE_HEARTBEAT_SECONDS))


def stale_after() -> float:
    """Seconds without a beat after which a service counts as stopped."""
    return beat_interval() * STALE_BEATS


def service_state(row: ServiceHeartbeat | None, *, now: datetime | None = None) -> str:
    if row is None:
        return ServiceState.NEVER_STARTED
    if row.stopped_at is not None:
        return ServiceState.STOPPED
    now = now or timezone.now()
    if row.beat_at < now - timedelta(seconds=stale_after()):
        return ServiceState.STOPPED
    return ServiceState.RUNNING


def service_payload(
    name: str, row: ServiceHeartbeat | None, *, now: datetime | None = None
) -> dict[str, Any]:
    """The shape of a ``service`` live event and of each entry of the dashboard's list."""

    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "name": name,
        "command": SERVICES.get(name, name),
        "state": service_state(row, now=now),
        "pid": row.pid if row else None,
        "host": row.host if row else "",
        "started_at": iso(row.started_at) if row else None,
        "beat_at": iso(row.beat_at) if row else None,
        "stopped_at": iso(row.stopped_at) if row else None,
        "detail": row.detail if row else {},
    }


def services_state(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every known service, whether it ever ran or not. One query."""
    now = now or timezone.now()
    rows = {row.name: row for row in ServiceHeartbeat.objects.all()}
    names = list(SERVICES) + sorted(set(rows) - set(SERVICES))
    return [service_payload(name, rows.get(name), now=now) for name in names]


def _identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()[:255]


@transaction.atomic
def record_start(name: str, *, detail: dict[str, Any] | None = None) -> ServiceHeartbeat:
    """This process now runs ``name``: its row says so, and open pages are told."""
    pid, host = _identity()
    now = timezone.now()
    row, _ = ServiceHeartbeat.objects.update_or_create(
        name=name,
        defaults={
            "pid": pid,
            "host": host,
            "started_at": now,
            "beat_at": now,
            "stopped_at": None,
            "detail": detail or {},
        },
    )
    publish("service", service_payload(name, row, now=now))
    return row


def record_beat(name: str) -> bool:
    """One ``UPDATE`` of this process's row. False if the row is no longer this process's
    (another process took the name over, or the row was deleted): the caller re-records."""
    pid, host = _identity()
    updated = ServiceHeartbeat.objects.filter(
        name=name, pid=pid, host=host, stopped_at__isnull=True
    ).update(beat_at=timezone.now())
    return updated == 1


@transaction.atomic
def record_stop(name: str) -> None:
    """This process stops running ``name`` (a clean shutdown). Another process's row is left
    alone: it may have taken the name over meanwhile."""
    pid, host = _identity()
    now = timezone.now()
    row = (
        ServiceHeartbeat.objects.select_for_update()
        .filter(name=name, pid=pid, host=host, stopped_at__isnull=True)
        .first()
    )
    if row is None:
        return
    row.stopped_at = now
    row.beat_at = now
    row.save(update_fields=["stopped_at", "beat_at"])
    publish("service", service_payload(name, row, now=now))


class Heartbeat:
    """``start()`` records the start and beats in a daemon thread until ``stop()``, which
    records the stop and waits (bounded) for the thread to finish."""

    def __init__(self, name: str, *, detail: dict[str, Any] | None = None) -> None:
        self.name = name
        self.detail = detail or {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"heartbeat-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        started = self._safely(lambda: record_start(self.name, detail=self.detail))
        try:
            while not self._stop.wait(beat_interval()):
                if started and self._safely(lambda: record_beat(self.name)):
                    continue
                # Never recorded (the database was down), or the row is gone or another
                # process's: record again, unless that other process is alive.
                started = self._safely(self._reclaim)
            if started:
                self._safely(lambda: record_stop(self.name))
        finally:
            connection.close()  # this thread's own connection

    def _reclaim(self) -> bool:
        row = ServiceHeartbeat.objects.filter(name=self.name).first()
        if row is not None and service_state(row) == ServiceState.RUNNING:
            if (row.pid, row.host) != _identity():
                return False  # two processes run it; the other one reports
        record_start(self.name, detail=self.detail)
        return True

    def _safely(self, call) -> Any:
        try:
            return call()
        except DatabaseError:
            logger.warning("heartbeat of %s not recorded", self.name, exc_info=True)
            connection.close()
            return None
