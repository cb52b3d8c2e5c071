"""DRF throttles: per user or key on the REST API (vend stricter), per device on device
endpoints; 429 in our error shape with Retry-After. Each test gets a fresh cache."""

import os
import uuid
from unittest import mock

import pytest
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from devices.models import CommunicationLog
from devices.tests.helpers import DEVICE_ID, confirm, poll
from tests.factories import UserFactory
from vending_site.http.network import client_ip

# Database 4, and under pytest-xdist one more per worker (gw1: 5): each test clears its
# database when done, which must not wipe another worker's counts mid-test.
REDIS_DB = 4 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


def redis_available() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True, params=["locmem", "redis"])
def fresh_cache(request, settings):
    """Every test twice: with process memory (no REDIS_URL) and with the shared Redis cache,
    whose counting is one round trip (``FailOpenRedisCache.hit_windows``, backends/cache.py)."""
    if request.param == "locmem":
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "LOCATION": f"throttle-{uuid.uuid4()}",
            }
        }
        yield None
        return
    cache = use_redis_cache(settings)
    yield cache
    cache.clear()


def use_redis_cache(settings):
    """The default cache on this worker's Redis database, as a multi-worker deployment has
    it, under a key prefix of the test's own (skips the test when Redis is not there)."""
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings.CACHES = {
        "default": {
            "BACKEND": "vending_site.backends.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}",
        }
    }
    from django.core.cache import cache

    return cache


def key_client() -> APIClient:
    _key, secret = APIKey.objects.create_key(name="t")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return client


def assert_throttled(response):
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["code"] == "throttled"
    assert "throttled" in body["detail"]


def test_vends_beyond_the_rate_are_429_while_reads_go_on(online_device, settings, client_for):
    settings.API_THROTTLE_VEND = "2/min"
    client = client_for(UserFactory())

    statuses = [client.post(f"/api/v1/vend/{n}", {}, format="json").status_code for n in (1, 2)]
    refused = client.post("/api/v1/vend/3", {}, format="json")

    assert statuses == [202, 202]
    assert_throttled(refused)
    assert client.get("/api/v1/transactions/").status_code == 200


def test_each_api_key_has_its_own_bucket(online_device, settings):
    settings.API_THROTTLE_VEND = "1/min"
    first, second = key_client(), key_client()

    assert first.post("/api/v1/vend/1", {}, format="json").status_code == 202
    assert_throttled(first.post("/api/v1/vend/2", {}, format="json"))
    assert second.post("/api/v1/vend/2", {}, format="json").status_code == 202


def test_reads_have_their_own_rate(online_device, settings, client_for):
    settings.API_THROTTLE_USER = "2/min"
    client = client_for(UserFactory())

    assert [client.get("/api/v1/devices/").status_code for _ in range(2)] == [200, 200]
    assert_throttled(client.get("/api/v1/transactions/"))


def test_anonymous_token_requests_are_limited_per_address(db, settings):
    settings.API_THROTTLE_ANON = "2/min"
    client = APIClient()
    wrong = {"username": "nobody", "password": "wrong"}

    first = [client.post("/api/v1/auth/token/", wrong, format="json").status_code for _ in "ab"]
    third = client.post("/api/v1/auth/token/", wrong, format="json")
    elsewhere = client.post("/api/v1/auth/token/", wrong, format="json", REMOTE_ADDR="10.0.0.9")

    assert first == [401, 401]
    assert_throttled(third)
    assert elsewhere.status_code == 401


def test_a_device_beyond_its_rate_gets_429_and_other_devices_do_not(online_device, settings):
    settings.DEVICE_THROTTLE = "2/min"
    client = APIClient()

    assert [poll(client).status_code for _ in range(2)] == [200, 200]
    assert_throttled(poll(client))
    assert poll(client, "ESP32_AAAAAAAAAAAA").status_code == 200


def test_a_device_polling_every_two_seconds_for_minutes_is_never_throttled(online_device):
    client = APIClient()

    statuses = {poll(client).status_code for _ in range(90)}  # 3 minutes of polling, at once

    assert statuses == {200}


def test_the_status_probe_is_limited_like_a_device_not_like_an_anonymous_client(db, settings):
    settings.API_THROTTLE_ANON = "1/min"

    assert [APIClient().get("/status").status_code for _ in range(3)] == [200, 200, 200]


class FakeRequest:
    def __init__(self, **meta):
        self.META = meta


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"REMOTE_ADDR": "10.0.0.5"}, "10.0.0.5"),
        # Only a trusted proxy (loopback by default) is believed about X-Forwarded-For ...
        ({"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "192.168.1.7"}, "10.0.0.5"),
        ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "192.168.1.7"}, "192.168.1.7"),
        # ... and a client cannot put a forged address in front of the one nginx appended.
        (
            {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "1.2.3.4, 192.168.1.7"},
            "192.168.1.7",
        ),
        ({"REMOTE_ADDR": "::1", "HTTP_X_FORWARDED_FOR": "127.0.0.1, 192.168.1.8"}, "192.168.1.8"),
    ],
)
def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies(meta, expected):
    assert client_ip(FakeRequest(**meta)) == expected


def test_device_throttle_keys_on_the_claimed_device(online_device, settings):
    settings.DEVICE_THROTTLE = "1/min"
    client = APIClient()

    assert poll(client, DEVICE_ID).status_code == 200
    # Another machine behind the same address (NAT) is not held back by the first one.
    assert poll(client, "ESP32_BBBBBBBBBBBB").status_code == 200
    assert_throttled(poll(client, DEVICE_ID))


def test_a_stranger_claiming_a_machines_id_does_not_spend_its_allowance(online_device, settings):
    """Finding 4 of the device-trust review: ~47 requests/s claiming a machine's id made
    26 of its 28 polls 429; it went offline and its vends were refused."""
    settings.DEVICE_THROTTLE = "5/min"
    stranger = APIClient(REMOTE_ADDR="127.0.0.2")

    flood = [poll(stranger).status_code for _ in range(20)]
    heads = [stranger.head(f"/esp32/commands/{DEVICE_ID}").status_code for _ in range(20)]

    assert set(flood) == {403, 429}  # bound elsewhere, then its own limit
    assert set(heads) == {405}
    assert [poll(APIClient()).status_code for _ in range(5)] == [200] * 5


def test_head_requests_do_not_count_against_a_machine(online_device, settings):
    settings.DEVICE_THROTTLE = "3/min"
    client = APIClient()

    heads = {client.head(f"/esp32/commands/{DEVICE_ID}").status_code for _ in range(10)}

    assert heads == {405}
    assert [poll(client).status_code for _ in range(3)] == [200] * 3


def test_a_machine_is_one_count_however_it_spells_its_id(online_device, settings):
    settings.DEVICE_THROTTLE = "2/min"
    client = APIClient()

    assert poll(client, DEVICE_ID).status_code == 200
    assert poll(client, "6c:c8:40:4f:e0:3c").status_code == 200
    assert_throttled(poll(client, "6CC8404FE03C"))


def test_a_throttled_device_request_writes_no_log_row(online_device, settings):
    settings.DEVICE_THROTTLE = "1/min"
    client = APIClient()
    assert poll(client).status_code == 200
    before = CommunicationLog.objects.count()

    for _ in range(5):
        assert_throttled(poll(client))

    assert CommunicationLog.objects.count() == before


def test_a_flood_of_wrong_tokens_is_throttled_before_the_token_check(online_device, settings):
    settings.DEVICE_TOKEN_REQUIRED = True
    settings.DEVICE_ADDRESS_THROTTLE = "2/min"
    client = APIClient()
    before = CommunicationLog.objects.count()

    codes = [
        client.get(f"/esp32/commands/{DEVICE_ID}", HTTP_X_DEVICE_TOKEN="wrong").status_code
        for _ in range(6)
    ]

    assert codes == [403, 403, 429, 429, 429, 429]
    assert CommunicationLog.objects.count() == before + 2  # only the two refusals answered


def test_inventing_a_new_device_id_per_request_meets_the_address_limit(db, settings):
    settings.DEVICE_ADDRESS_THROTTLE = "3/min"
    client = APIClient()

    codes = [poll(client, f"ESP32_0000000000{n:02d}").status_code for n in range(5)]

    assert codes == [200, 200, 200, 429, 429]


def test_a_confirmation_is_not_refused_by_the_per_device_limit(online_device, settings):
    settings.DEVICE_THROTTLE = "1/min"
    client = APIClient()
    assert poll(client).status_code == 200
    assert_throttled(poll(client))

    response = confirm(client)

    assert response.status_code == 200, response.content


def test_wrong_tokens_do_not_use_up_the_real_machines_allowance(online_device, settings):
    from devices.access import issue_device_token

    settings.DEVICE_TOKEN_REQUIRED = True
    settings.DEVICE_THROTTLE = "2/min"
    token = issue_device_token(device=online_device)
    attacker = APIClient()
    for _ in range(5):
        assert (
            attacker.get(f"/esp32/commands/{DEVICE_ID}", HTTP_X_DEVICE_TOKEN="x").status_code == 403
        )

    response = APIClient().get(f"/esp32/commands/{DEVICE_ID}", HTTP_X_DEVICE_TOKEN=token)

    assert response.status_code == 200


def test_status_with_a_new_device_id_each_time_meets_the_address_limit(db, settings):
    settings.DEVICE_ADDRESS_THROTTLE = "2/min"
    client = APIClient()

    codes = [
        client.get("/status", HTTP_DEVICE_ID=f"ESP32_0000000000{n:02d}").status_code
        for n in range(4)
    ]

    assert codes == [200, 200, 429, 429]


# The sliding-window counter (vending_site.http.throttling.WindowCounting).


def window_throttle(rate: str, clock: list[float]):
    from devices.api.throttles import DeviceAddressThrottle

    throttle = DeviceAddressThrottle()
    throttle.rate = rate
    throttle.num_requests, throttle.duration = throttle.parse_rate(rate)
    throttle.timer = lambda: clock[0]
    return throttle


def hit(throttle, address: str = "10.0.0.7") -> bool:
    from django.test import RequestFactory

    return throttle.allow_request(RequestFactory().get("/", REMOTE_ADDR=address), None)


def test_the_previous_window_weighs_by_how_much_of_it_still_overlaps(db):
    clock = [60.0 * 1000 + 59]  # 59 s into a window
    throttle = window_throttle("10/min", clock)
    assert all(hit(throttle) for _ in range(10))

    clock[0] += 2  # 1 s into the next one: 10 * 59/60 + 1 > 10
    assert not hit(throttle)
    # One more fits once the old window's weight is 9 or less: 6 s into the window.
    assert throttle.wait() == pytest.approx(5.0)
    clock[0] += 4.9
    assert not hit(throttle)
    clock[0] += 0.2
    assert hit(throttle)


def test_a_refused_request_is_not_counted(db):
    clock = [60.0 * 2000]
    throttle = window_throttle("3/min", clock)
    assert [hit(throttle) for _ in range(5)] == [True, True, True, False, False]
    # Had the refused two counted, the next window would start with 5 against a limit of 3.
    clock[0] += 60 + 30  # half of the previous window still weighs: 3 * 0.5 = 1.5
    assert [hit(throttle) for _ in range(2)] == [True, False]


def test_the_wait_after_a_full_window_runs_into_the_next_one(db):
    clock = [60.0 * 3000 + 15]
    throttle = window_throttle("4/min", clock)
    assert [hit(throttle) for _ in range(5)] == [True] * 4 + [False]
    # 45 s left in this window, then its 4 hits must fade to 3: a quarter of the next one.
    assert throttle.wait() == pytest.approx(45 + 15)


def test_each_address_counts_on_its_own(db):
    clock = [60.0 * 4000]
    throttle = window_throttle("1/min", clock)
    assert hit(throttle, "10.0.0.1")
    assert not hit(throttle, "10.0.0.1")
    assert hit(throttle, "10.0.0.2")


@pytest.fixture
def redis_cache(fresh_cache):
    if fresh_cache is None:
        pytest.skip("a Redis test")
    return fresh_cache


def test_with_redis_a_device_beyond_its_rate_is_refused_and_counters_expire(
    online_device, settings, redis_cache
):
    settings.DEVICE_THROTTLE = "3/min"
    client = APIClient()

    assert [poll(client).status_code for _ in range(3)] == [200] * 3
    assert_throttled(poll(client))
    assert poll(client, "ESP32_AAAAAAAAAAAA").status_code == 200

    raw = redis_cache._cache.get_client(write=True)
    keys = [key.decode() for key in raw.keys(f"{redis_cache.key_prefix}*device_ESP32*")]
    assert keys, "the per-device counter lives in Redis"
    for key in keys:
        assert 0 < raw.ttl(key) <= 120  # two windows, then gone
    own = [key for key in keys if DEVICE_ID in key]
    assert sum(int(raw.get(key)) for key in own) == 3  # the refused poll was taken back


def test_the_redis_cache_builds_one_client_per_server_not_one_per_call(redis_cache):
    client = redis_cache._cache
    assert client.get_client() is client.get_client(write=True)
    redis_cache.set("k", 1)
    assert redis_cache.get("k") == 1


def test_with_redis_a_device_request_counts_both_limits_in_one_round_trip(
    online_device, redis_cache
):
    from redis import Redis

    client = APIClient()
    poll(client)  # connections made, the script loaded, the device's last_seen fresh
    commands = []
    send = Redis.execute_command

    def recording(redis, *args, **options):
        commands.append(args[0])
        return send(redis, *args, **options)

    with mock.patch.object(Redis, "execute_command", recording):
        assert poll(client).status_code == 200
    # The address and the device counters, counted by one script in one command.
    assert commands == ["EVALSHA"]
