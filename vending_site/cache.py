"""The Redis cache, failing open: when Redis is unreachable it behaves as an empty cache.

The cache holds only throttle counts (``vending_site.throttling``); idempotency keys, vends
and stock live in the database. A throttle that cannot count must let the request through:
a machine's poll or confirmation refused because Redis is down would stop vending for a
reason that has nothing to do with it. So a Redis error is logged and the call answers as a
miss (``get`` returns the default, writes do nothing).

After a failure Redis is left alone for ``REDIS_RETRY_AFTER`` seconds (a simple breaker):
a Redis that hangs would otherwise cost every request ``REDIS_TIMEOUT`` per cache call, and a
device request makes four. The first call after the pause tries Redis again.
"""

import logging

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.exceptions import RedisError

from .outages import Breaker

logger = logging.getLogger(__name__)


class ReusingRedisCacheClient(RedisCacheClient):
    """Django's client builds a new ``redis.Redis`` for every cache call; building one fills
    a table of a few hundred response callbacks, and the throttles make two calls per
    request. This keeps one per connection pool instead (redis-py clients are thread-safe:
    each command borrows a connection from the pool)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._client(connection_pool=self._get_connection_pool(write))
            self._clients[index] = client
        return client


class FailOpenRedisCache(RedisCache):
    """Django's Redis cache; an unreachable Redis reads as a miss and swallows writes."""

    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient  # read when the client is first built
        self.breaker = Breaker()

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
