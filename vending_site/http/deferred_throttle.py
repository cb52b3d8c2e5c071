"""Throttle hits counted in process memory and added to the shared counters a few times a
second, for requests too cheap to afford a Redis round trip each (the idle device poll
answered from memory, ``devices.api.poll_shortcut``).

The counters are the throttles' own (``vending_site.http.throttling``: the same keys, the
same fixed windows, the same sliding estimate), so a request counted here and one counted
by a throttle weigh the same. Each process adds what it counted every
:data:`FLUSH_SECONDS` and learns, in the same round trip, every process's totals for those
keys. A request is allowed here when the last totals learnt plus what this process counted
since stay within the rate; otherwise it is declined, and the caller leaves the request to
the throttle, which counts it in Redis and refuses it if the shared count says so. So a
limit holds across processes up to what they count in one flush interval, and a sender over
its limit is refused by the throttle, with its ``Retry-After``, as before.

When the cache is unreachable the flush adds nothing and everything is allowed: throttles
fail open (``vending_site.backends.cache``).
"""

from __future__ import annotations

import os
import threading
import time

from django.core.cache import caches
from rest_framework.throttling import SimpleRateThrottle

from vending_site.observability.ticker import Ticker

from .throttling import add_hits

FLUSH_SECONDS = 0.25


class DeferredWindows:
    """This process's hits per throttle key, and the shared totals learnt at the last flush."""

    def __init__(self) -> None:
        self.clock = time.time  # a test's own clock
        self.ticker = Ticker("throttle-flush", FLUSH_SECONDS, self.flush)
        self._fresh_process()
        os.register_at_fork(after_in_child=self._fresh_process)

    def _fresh_process(self) -> None:
        """Nothing counted yet (the parent adds its own) and a lock nobody holds."""
        self._lock = threading.Lock()
        # (key, window) -> [hits not yet added, period]
        self._pending: dict[tuple[str, int], list[int]] = {}
        # key -> (window, its total, the total of the window before, the window's length)
        # at the last flush
        self._known: dict[str, tuple[int, int, int, int]] = {}
        self._rates: dict[str, tuple[int, int] | None] = {}

    def rate(self, text: str) -> tuple[int, int] | None:
        """``"600/min"`` as (requests, seconds); None for no limit."""
        rate = self._rates.get(text, False)
        if rate is False:
            rate = self._rates[text] = SimpleRateThrottle.parse_rate(None, text) if text else None
        return rate

    def allow(
        self, limits: list[tuple[str, tuple[int, int] | None]], *, flush: bool = True
    ) -> bool:
        """Count one request under each ``(key, rate)`` if it fits every rate, as far as
        this process knows; else count nothing, add what this process counted to the shared
        counters at once (so the throttles, which the caller leaves the request to, see it;
        not with ``flush=False``, on an event loop) and return False."""
        now = self.clock()
        with self._lock:
            slots = []
            for key, rate in limits:
                if rate is None:
                    continue
                limit, period = rate
                window, elapsed = divmod(now, period)
                window = int(window)
                known = self._known.get(key)
                if known is None or known[0] < window - 1:
                    total, before = 0, 0
                elif known[0] == window:
                    total, before = known[1], known[2]
                else:  # learnt in the window before this one
                    total, before = 0, known[1]
                pending = self._pending.get((key, window))
                mine = pending[0] if pending else 0
                earlier = self._pending.get((key, window - 1))
                if earlier:  # counted here in the window before, not yet added
                    before += earlier[0]
                if before * (1 - elapsed / period) + total + mine + 1 > limit:
                    break
                slots.append((key, window, period, pending))
            else:
                for key, window, period, pending in slots:
                    if pending:
                        pending[0] += 1
                    else:
                        self._pending[(key, window)] = [1, period]
                self.ticker.ensure()
                return True
        if flush:
            self.flush()
        return False

    def learn(self, key: str, *, window: int, period: int, total: int, before: int) -> None:
        """The shared totals of ``key`` as a throttle just counted them (this request
        included): the first request of a machine is counted there, not here."""
        with self._lock:
            known = self._known.get(key)
            if known is None or known[0] < window or (known[0] == window and known[1] < total):
                self._known[key] = (window, total, before, period)

    def flush(self) -> None:
        """Add this process's hits to the shared counters and learn their totals."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        counters = [(key, window, period, n) for (key, window), (n, period) in pending.items()]
        counts = add_hits(caches["default"], counters)
        if counts is None:
            return  # unreachable: the hits are dropped, as the throttles fail open
        with self._lock:
            for (key, window, period, _hits), (total, before) in zip(counters, counts, strict=True):
                known = self._known.get(key)
                if known is None or known[0] <= window:
                    self._known[key] = (window, total, before, period)
            self._prune()

    def _prune(self) -> None:
        """Forget totals too old to weigh in any estimate (the caller holds the lock)."""
        now = self.clock()
        stale = [key for key, known in self._known.items() if now // known[3] > known[0] + 1]
        for key in stale:
            del self._known[key]

    def forget(self) -> None:
        """Drop everything counted and learnt (tests)."""
        with self._lock:
            self._pending.clear()
            self._known.clear()


windows = DeferredWindows()
