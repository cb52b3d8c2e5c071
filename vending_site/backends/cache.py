"""The Redis cache, failing open: when Redis is unreachable it behaves as an empty cache.

The cache holds only throttle counts (``vending_site.http.throttling``); idempotency keys, vends
and stock live in the database. A throttle that cannot count must let the request through:
a machine's poll or confirmation refused because Redis is down would stop vending for a
reason that has nothing to do with it. So a Redis error is logged and the call answers as a
miss (``get`` returns the default, writes do nothing).

After a failure Redis is left alone for ``REDIS_RETRY_AFTER`` seconds (a simple breaker):
a Redis that hangs would otherwise cost every request ``REDIS_TIMEOUT`` per cache call (a
device request makes one, the :meth:`FailOpenRedisCache.hit_windows` script). The first call
after the pause tries Redis again.
"""

import logging

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.exceptions import RedisError

from vending_site.backends.outages import Breaker

logger = logging.getLogger(__name__)

# add_to_windows in one command. KEYS: per counter, this window's key then the previous
# window's; ARGV: per counter, this window's lifetime in seconds then the hits to add. Returns
# per counter this window's hits (these included) and the previous window's. A script runs
# whole: a counter never exists without its lifetime.
_ADD_TO_WINDOWS = """
local replies = {}
for i = 1, #KEYS / 2 do
    local current = KEYS[2 * i - 1]
    local hits = redis.call('INCRBY', current, ARGV[2 * i])
    redis.call('EXPIRE', current, ARGV[2 * i - 1])
    replies[2 * i - 1] = hits
    replies[2 * i] = tonumber(redis.call('GET', KEYS[2 * i]) or 0)
end
return replies
"""


class ReusingRedisCacheClient(RedisCacheClient):
    """Django's Redis cache client, building one ``redis.Redis`` per server, not per call.

    Django's client makes a new ``redis.Redis`` for every cache call; its constructor fills a
    table of some 170 response callbacks, which cost more CPU than the Redis round trip itself
    (a third of an idle device poll, measured with bench/poll_profile.py). A ``redis.Redis``
    over a connection pool is safe to share between threads.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients.setdefault(id(pool), self._client(connection_pool=pool))
        return client


class FailOpenRedisCache(RedisCache):
    """Django's Redis cache; an unreachable Redis reads as a miss and swallows writes."""

    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient
        self.breaker = Breaker()
        self._hit_script = None

    def hit_windows(self, counters: list[tuple[str, int, int]]) -> list[tuple[int, int]] | None:
        """Count one hit in each ``(key, window, period)`` fixed window; one round trip.

        Returns, per counter, (hits in this window, counting this one; hits in the window
        before), or None when Redis is unreachable. Each window's counter lives for two periods.
        Keys are the throttles' own (id characters only), so they are not checked for
        memcached's rules, which Redis does not have.
        """
        return self.add_to_windows([(key, window, period, 1) for key, window, period in counters])

    def add_to_windows(
        self, counters: list[tuple[str, int, int, int]]
    ) -> list[tuple[int, int]] | None:
        """:meth:`hit_windows` with ``(key, window, period, hits)``: add ``hits`` at once."""
        keys, args = [], []
        for key, window, period, hits in counters:
            keys += [self.make_key(f"{key}:{window}"), self.make_key(f"{key}:{window - 1}")]
            args += [2 * period, hits]

        def count() -> list[tuple[int, int]]:
            client = self._cache.get_client(write=True)
            script = self._hit_script
            if script is None or script.registered_client is not client:
                script = self._hit_script = client.register_script(_ADD_TO_WINDOWS)
            replies = script(keys=keys, args=args, client=client)
            return [(int(replies[i]), int(replies[i + 1])) for i in range(0, len(replies), 2)]

        return self._guarded(None, count)

    def unhit_window(self, key: str, *, window: int) -> None:
        """Take back a hit counted by :meth:`hit_windows` (a refused request is not counted)."""
        current = self.make_and_validate_key(f"{key}:{window}")
        self._guarded(None, lambda: self._cache.get_client(write=True).decr(current))

    def _guarded(self, default, method, *args, **kwargs):
        if not self.breaker.allows():
            return default
        try:
            return method(*args, **kwargs)
        except RedisError as exc:
            if self.breaker.trip(settings.REDIS_RETRY_AFTER):
                logger.warning(
                    "Redis is unreachable (%s); the cache acts empty for %g s",
                    exc,
                    settings.REDIS_RETRY_AFTER,
                )
            return default

    def get(self, key, default=None, version=None):
        return self._guarded(default, super().get, key, default, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(None, super().set, key, value, timeout, version)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(False, super().add, key, value, timeout, version)

    def delete(self, key, version=None):
        return self._guarded(False, super().delete, key, version)

    def get_many(self, keys, version=None):
        return self._guarded({}, super().get_many, keys, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(list(data), super().set_many, data, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(False, super().touch, key, timeout, version)

    def has_key(self, key, version=None):
        return self._guarded(False, super().has_key, key, version)

    def incr(self, key, delta=1, version=None):
        # A counter that cannot be read cannot be incremented: Django's own contract for a
        # missing key is ValueError, which callers already handle.
        if not self.breaker.allows():
            raise ValueError(f"Key '{key}' not found (Redis unreachable)")
        try:
            return super().incr(key, delta, version)
        except RedisError as exc:
            self.breaker.trip(settings.REDIS_RETRY_AFTER)
            raise ValueError(f"Key '{key}' not found (Redis unreachable: {exc})") from exc
