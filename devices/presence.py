"""Coalesced ``last_seen`` writes: one statement per process every fraction of a second
instead of one per refresh.

A machine polls every 2 s and its stored ``last_seen`` is refreshed every
``DEVICE_SEEN_WRITE_INTERVAL`` seconds (5), so one poll in three wrote: at 1000 machines
about 170 single-row UPDATE transactions a second, a quarter of a core between the web
workers and PostgreSQL (``bench/fleet_polling.py``, polls only: 67 % of the 2-core machine
busy with the writes, 55 % without). Here a refresh of a machine that is already online is
noted in memory, and a daemon thread of the process writes every noted refresh every
``DEVICE_SEEN_FLUSH_SECONDS`` in one UPDATE, through its own database connection.

What it guarantees:

- A stored ``last_seen`` only moves forward: a refresh older than the stored value (another
  process wrote a later one) changes nothing.
- A refresh that could not be written (the database is unreachable) is kept and written by
  a later flush; per machine only the latest is kept, so the buffer is bounded by the
  number of machines.
- A machine that comes online is written in the request as before (:func:`mark_seen` in
  ``devices.services`` does that and publishes it): only refreshes of online machines wait.
  The stored value is then at most ``DEVICE_SEEN_WRITE_INTERVAL`` + one poll gap (2 s, 4 s
  with a slow answer) + ``DEVICE_SEEN_FLUSH_SECONDS`` old, under ``DEVICE_OFFLINE_AFTER``:
  settings turn the writer off where that would not hold.
- A process that ends loses at most its unwritten refreshes, which the machines' next polls
  note again; the process writes them on a normal exit.
- A forked child starts with an empty buffer and a thread of its own; a thread that died
  (it should not: every failure of a flush is caught) is started again by the next note.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction

from .models import Device

logger = logging.getLogger(__name__)

MIN_PAUSE = 0.05  # seconds between flushes, whatever the setting says
LOCK_TIMEOUT_MS = 500  # a device row held longer than this fails the flush (retried)


def write_seen(seen: dict[int, datetime]) -> int:
    """Write each machine's ``last_seen`` where the stored value is older (or unset), in one
    statement on PostgreSQL; returns how many rows changed.

    Plain SQL on purpose: the ORM's form of it (``Case`` with a ``When`` a machine) costs
    about half a millisecond of CPU per machine to build, under the GIL of a worker serving
    polls (``bench`` measured 64 ms for 125 machines; this is well under one)."""
    if not seen:
        return 0
    ops = connection.ops
    table = ops.quote_name(Device._meta.db_table)
    pk = ops.quote_name(Device._meta.pk.column)
    last_seen = ops.quote_name(Device._meta.get_field("last_seen").column)
    newer = f"({table}.{last_seen} IS NULL OR {table}.{last_seen} < %s)"
    items = sorted(seen.items())
    if connection.vendor == "postgresql":
        # The rows are locked in id order first, so two writers never wait for each other
        # crosswise; a row another transaction holds fails the flush after LOCK_TIMEOUT (its
        # refreshes are kept for the next one) instead of holding them all for the
        # statement timeout.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
            cursor.execute(
                f"WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, seen)),"
                f" rows AS (SELECT {table}.{pk} FROM {table} JOIN v ON {table}.{pk} = v.id"
                f" ORDER BY {table}.{pk} FOR UPDATE OF {table})"
                f" UPDATE {table} SET {last_seen} = v.seen FROM v, rows"
                f" WHERE {table}.{pk} = v.id AND {table}.{pk} = rows.{pk}"
                f" AND {newer.replace('%s', 'v.seen')}",
                [[key for key, _ in items], [moment for _, moment in items]],
            )
            return cursor.rowcount
    changed = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for key, moment in items:
            stamp = ops.adapt_datetimefield_value(moment)
            cursor.execute(
                f"UPDATE {table} SET {last_seen} = %s WHERE {pk} = %s AND {newer}",
                [stamp, key, stamp],
            )
            changed += cursor.rowcount
    return changed


class SeenBuffer:
    """The refreshes noted by this process and the thread that writes them."""

    def __init__(self, *, writer: bool = True) -> None:
        self._writer = writer  # False: no thread, the owner calls flush()
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, datetime] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failing = False

    def note(self, pk: int, moment: datetime) -> None:
        """Remember that machine ``pk`` was seen at ``moment``; written by the next flush."""
        with self._lock:
            self._keep_latest(pk, moment)
            if self._writer and (self._thread is None or not self._thread.is_alive()):
                thread = threading.Thread(
                    target=self._run, args=(self._stopping,), name="last-seen-writer", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: the next note tries again
                    logger.exception("could not start the last_seen writer")
                    return
                self._thread = thread

    @property
    def writing(self) -> bool:
        """Whether this process's writer thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> dict[int, datetime]:
        with self._lock:
            return dict(self._due)

    def flush(self) -> int:
        """Write every noted refresh now, in the calling thread; returns the rows changed.
        On failure the refreshes are kept for the next flush and the error is raised."""
        with self._lock:
            due, self._due = self._due, {}
        if not due:
            return 0
        try:
            return write_seen(due)
        except BaseException:
            with self._lock:
                for pk, moment in due.items():
                    self._keep_latest(pk, moment)
            raise

    def _keep_latest(self, pk: int, moment: datetime) -> None:
        """Per machine only its latest refresh is kept (the caller holds the lock)."""
        known = self._due.get(pk)
        if known is None or moment > known:
            self._due[pk] = moment

    def _run(self, stopping: threading.Event) -> None:
        try:
            while not stopping.wait(max(settings.DEVICE_SEEN_FLUSH_SECONDS, MIN_PAUSE)):
                self._flush_logged()
        finally:
            _close_quietly()  # this thread's own connection

    def _flush_logged(self) -> None:
        # The thread keeps its connection whatever CONN_MAX_AGE says (manage.py serve and the bridge
        # run with 0: a connection every flush); one that failed is closed and made anew.
        try:
            self.flush()
        except Exception:
            _close_quietly()
            if not self._failing:  # once per outage, not every fraction of a second
                logger.warning("could not write last_seen; kept for the next try", exc_info=True)
            self._failing = True
        else:
            if self._failing:
                logger.info("last_seen written again")
            self._failing = False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and write what it has not (best effort: a failure is logged).
        A later :meth:`note` starts a new thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            stopping, self._stopping = self._stopping, threading.Event()
        if thread is None:
            return
        stopping.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
        try:
            self.flush()
        except Exception:
            logger.warning("could not write last_seen at exit", exc_info=True)


def _close_quietly() -> None:
    try:
        connection.close()
    except Exception:  # a connection that is already broken may fail to close
        logger.debug("closing the last_seen writer's connection failed", exc_info=True)


buffer = SeenBuffer()
os.register_at_fork(after_in_child=buffer._reset)
atexit.register(buffer.stop)
