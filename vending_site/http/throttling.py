"""Rate limits (DRF throttles): how they count, and the site-wide ones (per user or API key
on the REST API, per address on the token endpoints). The apps' own throttles build on
:class:`WindowCounting` and :class:`RateFromSettings`: ``devices.api.throttles`` (the device
endpoints), ``transactions.api.throttles`` (vends).

Rates are read from settings on every request (``API_THROTTLE_*``, ``DEVICE_THROTTLE``), so
they follow the environment and ``override_settings``. Counts live in the default cache
(Redis when ``REDIS_URL`` is set, so all workers share them; process memory otherwise).

Counting is a sliding-window counter (:class:`WindowCounting`), not DRF's list of
timestamps: one Redis round trip per throttle (increment this window's counter, read the
previous window's) instead of a read and a pickled write, and no list that grows with the
rate. The estimate weighs the previous window by how much of it still overlaps the last
``duration`` seconds; it is exact for evenly spread requests and never lets more than the
rate through in any window of ``duration`` seconds by more than the previous window's
unweighted tail. A refused request is taken back off the count, as DRF does not count it.
Throttles protect the server from a runaway client; they guard nothing that matters. Stock
and money are guarded by the database (row locks, constraints). When the cache is
unreachable they let every request through (``vending_site.backends.cache``).

A refused request gets 429, ``{"detail", "code": "throttled"}`` and ``Retry-After``.
"""

from django.conf import settings
from django.core.cache import BaseCache
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

from vending_site.http.network import client_ip


class RateFromSettings:
    """The rate from the setting ``rate_setting`` names, read on every request; the ident is
    the client's address."""

    rate_setting: str = ""

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting) or None

    def get_ident(self, request) -> str:
        return client_ip(request) or "unknown"


def count_hits(cache: BaseCache, counters: list[tuple[str, int, int]]):
    """One hit in each ``(key, window, period)`` fixed window, in one round trip where the
    cache can (Redis): per counter ``(hits in this window, hits in the one before)``, or None
    when the cache is unreachable. The throttles and the device log's budget count here."""
    return add_hits(cache, [(key, window, period, 1) for key, window, period in counters])


def add_hits(cache: BaseCache, counters: list[tuple[str, int, int, int]]):
    """:func:`count_hits` with ``(key, window, period, hits)``: ``hits`` added at once
    (``vending_site.http.deferred_throttle`` adds a process's hits of a fraction of a second)."""
    if hasattr(cache, "add_to_windows"):  # vending_site.backends.cache: one round trip for all
        return cache.add_to_windows(counters)
    counts = []
    for key, window, period, hits in counters:
        current = f"{key}:{window}"
        cache.add(current, 0, 2 * period)
        try:
            total = cache.incr(current, hits)
        except ValueError:  # expired between add and incr
            cache.set(current, hits, 2 * period)
            total = hits
        counts.append((total, cache.get(f"{key}:{window - 1}", 0)))
    return counts


def _unhit_window(cache: BaseCache, key: str, *, window: int) -> None:
    if hasattr(cache, "unhit_window"):
        cache.unhit_window(key, window=window)
        return
    try:
        cache.decr(f"{key}:{window}")
    except ValueError:
        pass


def allow_requests(throttles: list, request, view) -> list:
    """``allow_request`` of several throttles, counted in one cache round trip.

    Returns the throttles that refuse (each has its ``wait()``). Every throttle that allows
    keeps its hit, as DRF's own ``check_throttles`` does with each throttle in turn. When the
    cache is unreachable, all allow (fail open).
    """
    now = throttles[0].timer() if throttles else 0.0
    counted = [t for t in throttles if t._start(request, view, now)]
    if not counted:
        return []
    counts = count_hits(counted[0].cache, [(t.key, t._window, t.duration) for t in counted])
    if counts is None:  # the cache is unreachable: fail open
        return []
    return [
        t for t, (hits, before) in zip(counted, counts, strict=True) if not t._settle(hits, before)
    ]


class WindowCounting:
    """``allow_request``/``wait`` of a DRF ``SimpleRateThrottle``, as a sliding-window counter.

    Windows are the ``duration``-long spans of the clock (``window = now // duration``). A
    request is allowed when ``previous * (1 - elapsed / duration) + current`` (this request
    included) is at most the rate.
    """

    def allow_request(self, request, view) -> bool:
        return not allow_requests([self], request, view)

    def _start(self, request, view, now: float) -> bool:
        """Whether this request is counted at all; if so, where."""
        self.counted = False
        self.counts = None
        if self.rate is None:
            return False
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return False
        window, self._elapsed = divmod(now, self.duration)
        self._window = int(window)
        self.counted = True
        return True

    def _settle(self, hits: int, before: int) -> bool:
        self.counts = (hits, before)  # the shared totals, this request included
        if before * (1 - self._elapsed / self.duration) + hits <= self.num_requests:
            return True
        self.take_back()
        self._wait = self._seconds_until_allowed(
            others=hits - 1, before=before, elapsed=self._elapsed
        )
        return False

    def take_back(self) -> None:
        """Uncount this request (refused, here or by a later check)."""
        if getattr(self, "counted", False):
            _unhit_window(self.cache, self.key, window=self._window)
            self.counted = False

    def _seconds_until_allowed(self, *, others: int, before: int, elapsed: float) -> float:
        """When would one more request fit, if no other came meanwhile?"""
        room = self.num_requests - 1  # what the others may weigh for one more to fit
        remaining = self.duration - elapsed
        if others <= room and before:
            # Still in this window: the previous window's weight fades linearly to 0.
            return max(0.0, remaining - (room - others) * self.duration / before)
        # In the next window this window's hits are the fading ones.
        fading = self.duration * (1 - room / others) if others else 0.0
        return remaining + max(0.0, fading)

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)


class AnonThrottle(WindowCounting, RateFromSettings, AnonRateThrottle):
    """Unauthenticated callers (the token endpoints, ``/status``, ``/health``), by address."""

    rate_setting = "API_THROTTLE_ANON"


class UserThrottle(WindowCounting, RateFromSettings, UserRateThrottle):
    """Reads, per user (each API key is its own user)."""

    rate_setting = "API_THROTTLE_USER"


class AuthThrottle(WindowCounting, RateFromSettings, SimpleRateThrottle):
    """The token and token-refresh endpoints, per client address, authenticated or not:
    each request there may cost a password hash (``vending_site.auth.logins``)."""

    scope = "auth"
    rate_setting = "AUTH_THROTTLE"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
