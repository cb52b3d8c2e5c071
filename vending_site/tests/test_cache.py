"""The Redis cache (throttle counts): one client per connection pool, not one per call."""

import socket

import pytest

from vending_site.backends.cache import FailOpenRedisCache

REDIS = "redis://127.0.0.1:6379/10"


@pytest.fixture
def cache():
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    cache = FailOpenRedisCache(REDIS, {"KEY_PREFIX": "vend-test-cache"})
    yield cache
    cache.delete("count")


def test_cache_calls_share_one_redis_client_and_still_round_trip(cache):
    cache.set("count", [3, 2, 1], 30)
    first = cache._cache.get_client(write=True)

    assert cache.get("count") == [3, 2, 1]
    assert cache.add("count", "other", 30) is False
    assert cache._cache.get_client(write=True) is first
    assert cache._cache.get_client(write=False) is cache._cache.get_client(write=False)


def test_an_unreachable_redis_still_reads_as_a_miss(settings):
    settings.REDIS_RETRY_AFTER = 60
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = FailOpenRedisCache(
        f"redis://127.0.0.1:{port}/10", {"OPTIONS": {"socket_connect_timeout": 0.5}}
    )

    assert cache.get("count", "missing") == "missing"
    cache.set("count", 1)  # swallowed
    assert cache.get("count") is None
