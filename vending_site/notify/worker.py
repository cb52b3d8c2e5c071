"""The notifier's loop: claim due deliveries, send them on a thread pool, record each try.

The pool has ``NOTIFY_WORKERS`` threads and an endpoint at most ``NOTIFY_PER_ENDPOINT`` of
them, so a receiver that hangs until the timeout holds two threads and the others keep
serving everyone else. Only as many deliveries are claimed as there are free threads, so a
claimed delivery never waits in a queue while its lease runs out. Idle, the loop looks for
due deliveries every ``NOTIFY_POLL_SECONDS`` (0.25 s), which keeps a healthy receiver's
delay well under a second.
"""

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from vending_site.observability.logging import get_logger

from . import outbox
from .models import Delivery
from .sending import Outcome, send

logger = get_logger(__name__)

STOP_CHECK_SECONDS = 0.1  # how soon a pause notices the stop signal


def worker_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


class Notifier:
    """``run(stop)`` until ``stop`` is set; ``periodic`` callables run every ``period``
    seconds in the loop's thread (alert checks, pruning), each guarded on its own."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        per_endpoint: int | None = None,
        poll: float | None = None,
        periodic: list[tuple[float, Callable[[], object]]] | None = None,
        name: str | None = None,
    ) -> None:
        self.workers = workers or settings.NOTIFY_WORKERS
        self.per_endpoint = per_endpoint or settings.NOTIFY_PER_ENDPOINT
        self.poll = poll if poll is not None else settings.NOTIFY_POLL_SECONDS
        self.periodic = [[every, task, 0.0] for every, task in periodic or []]
        self.name = name or worker_name()
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}
        self._send_finished = threading.Event()
        self.sent = 0

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="notify")
        try:
            while not stop.is_set():
                self._run_periodic()
                self._send_finished.clear()  # before claiming: a send finishing after it wakes us
                claimed = self._claim_and_submit(pool)
                if claimed and self._free() > 0:
                    continue  # there may be more, and threads to send it
                # Nothing more to take now: look again when a send finishes (it frees a
                # thread or an endpoint's share) or after the poll interval (new rows).
                self._pause(stop, self.poll)
        finally:
            self._shut_down(pool)  # every claimed delivery is sent and recorded
            connection.close()

    def _pause(self, stop: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (stop.is_set() or self._send_finished.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._send_finished.wait(min(left, STOP_CHECK_SECONDS))

    def run_once(self) -> int:
        """Claim and send what is due now, wait for it; returns how many were claimed."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="notify")
        try:
            return self._claim_and_submit(pool)
        finally:
            self._shut_down(pool)

    def _shut_down(self, pool: ThreadPoolExecutor) -> None:
        """Wait for the deliveries in flight, then close each thread's database connection:
        one closing task per thread, held at a barrier so no thread takes two."""
        barrier = threading.Barrier(self.workers)

        def close_connection() -> None:
            connection.close()
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass

        for _ in range(self.workers):
            pool.submit(close_connection)
        pool.shutdown(wait=True)

    def _free(self) -> int:
        with self._lock:
            return self.workers - sum(self._in_flight.values())

    def _claim_and_submit(self, pool: ThreadPoolExecutor) -> int:
        free = self._free()
        if free <= 0:
            return 0
        with self._lock:
            busy = dict(self._in_flight)
        try:
            claim = outbox.claim_due(
                worker=self.name, limit=free, busy=busy, per_endpoint=self.per_endpoint
            )
        except DatabaseError as exc:  # the database restarts: try again next round
            logger.warning("notify_claim_failed", error=str(exc))
            connection.close()
            return 0
        for delivery in claim.deliveries:
            with self._lock:
                self._in_flight[delivery.endpoint_id] = (
                    self._in_flight.get(delivery.endpoint_id, 0) + 1
                )
            pool.submit(self._deliver, delivery, claim.token)
        return len(claim.deliveries)

    def _run_periodic(self) -> None:
        now = time.monotonic()
        for entry in self.periodic:
            every, task, due = entry
            if now < due:
                continue
            entry[2] = now + every
            try:
                task()
            except DatabaseError as exc:
                logger.warning("notify_periodic_failed", task=task.__name__, error=str(exc))
                connection.close()
            except Exception:
                logger.exception("notify_periodic_failed", task=task.__name__)

    # --- one delivery (in a pool thread) ---------------------------------------------------

    def _deliver(self, delivery: Delivery, token: str) -> None:
        try:
            started = time.monotonic()
            started_at = timezone.now()
            try:
                outcome = send(delivery.endpoint, delivery.message)
            except Exception as exc:  # a sender's bug must not kill the thread or the lease
                logger.exception("notify_send_crashed", delivery=delivery.pk)
                outcome = Outcome(False, None, f"internal error: {type(exc).__name__}")
            duration_ms = int((time.monotonic() - started) * 1000)
            try:
                result = outbox.record_outcome(
                    delivery=delivery,
                    token=token,
                    outcome=outcome,
                    started_at=started_at,
                    duration_ms=duration_ms,
                    worker=self.name,
                )
            except DatabaseError as exc:
                # Not recorded: the lease runs out and the delivery is sent again.
                logger.warning("notify_record_failed", delivery=delivery.pk, error=str(exc))
                connection.close()
                return
            self.sent += 1
            log = logger.info if outcome.ok else logger.warning
            log(
                "notify_attempt",
                delivery=delivery.pk,
                endpoint=delivery.endpoint_id,
                event_type=delivery.message.event_type,
                result=result,
                status=outcome.status,
                error=outcome.error,
                duration_ms=duration_ms,
            )
        finally:
            with self._lock:
                left = self._in_flight.get(delivery.endpoint_id, 1) - 1
                if left > 0:
                    self._in_flight[delivery.endpoint_id] = left
                else:
                    self._in_flight.pop(delivery.endpoint_id, None)
            self._send_finished.set()
