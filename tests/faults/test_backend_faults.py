"""Network faults between a real web server and PostgreSQL/Redis, through fault proxies.

One worker (``manage.py serve``) on a throwaway PostgreSQL database (``dbfault_...``) that it
reaches only through a :class:`FaultProxy`, and Redis db 12 through another. A simulated
machine polls and confirms, and a kiosk vends with Idempotency-Keys (retrying with the same
key, as a client must), while each fault runs for a few seconds and then ends:

- PostgreSQL latency (slow, but within the timeouts), hang (accepts, answers nothing),
  reset (every connection cut and new ones refused: a restart);
- Redis reset (down) and hang.

For every request: an answer (never a client timeout), within ``BOUND`` seconds, and never a
5xx other than 503, which carries ``Retry-After`` and says which backend is unavailable.
For each PostgreSQL fault that bites: at least one 503, and polls answering 200 again within
10 s of the fault ending. With Redis down or hung, polls and vends go on answering 200/202.
At the end every vend the kiosk was told was accepted exists, and no vend exists that the
kiosk was not told about.

Timeouts are shortened through the environment (connect 2 s, statement 2 s, Redis 0.5 s)
so the run stays near a minute; migrating the scratch database is most of it.
"""

import http.client
import secrets
import threading
import time
from collections import Counter

import psycopg2
import pytest

from tests.faults.proxy import FaultProxy
from tests.scratch import databases
from tests.scratch.net import free_port, reachable, wait_http
from tests.scratch.net import request as http_request
from tests.scratch.stack import Stack

pytestmark = pytest.mark.postgres

DEVICE = "ESP32_DB0FA0170001"
PASSWORD = "dbfault-password-1"
REDIS_DB_URL = "redis://127.0.0.1:6379/12"
CONNECT_TIMEOUT = 2
STATEMENT_TIMEOUT = 2
# Seconds any one request may take, fault or not: the longest wait the server allows itself
# (a statement gets its timeout plus a second of grace), plus 2 s for a busy 2-core machine.
BOUND = max(CONNECT_TIMEOUT, STATEMENT_TIMEOUT + 1) + 2.0
RECOVERY = 10.0  # seconds after a fault ends within which polls answer 200 again
HTTP_TIMEOUT = 15.0  # the client's own; reaching it is a hang


def request(url, method, path, body=None, headers=None):
    return http_request(url, method, path, body, headers, timeout=HTTP_TIMEOUT)


def _admin():
    connection = psycopg2.connect(databases.pg_admin_url(), connect_timeout=3)
    connection.autocommit = True
    return connection


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not reachable(5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    if not reachable(6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    import redis

    logs = tmp_path_factory.mktemp("dbfault")
    name = f"dbfault_{secrets.token_hex(6)}"
    admin = _admin()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    direct = f"postgres://postgres@127.0.0.1:5432/{name}"
    cache = redis.Redis.from_url(REDIS_DB_URL, socket_timeout=3)
    cache.flushdb()
    pg_proxy = FaultProxy(5432, lifetime=300).start()
    redis_proxy = FaultProxy(6379, lifetime=300).start()
    stack = Stack(
        {
            "DATABASE_URL": direct,
            "REDIS_URL": REDIS_DB_URL,
            "DATA_DIR": str(logs),
            "PROMETHEUS_MULTIPROC_DIR": str(logs / "metrics"),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "DATABASE_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
            "OUTAGE_RETRY_AFTER": "2",
            "REDIS_TIMEOUT": "0.5",
            "REDIS_RETRY_AFTER": "2",
            "IDEMPOTENCY_LOCK_TIMEOUT": "3",
            "DEVICE_OFFLINE_AFTER": "60",
            "VEND_QUEUE_TTL": "120",
            "VEND_CONFIRM_TIMEOUT": "120",
            "LOG_LEVEL": "WARNING",
        },
        logs,
    )
    try:
        stack.seed([DEVICE], [40, 40, 40, 40, 40], "kiosk", PASSWORD)
        # The worker reaches both backends only through the proxies.
        stack.env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{pg_proxy.port}/{name}"
        stack.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_proxy.port}/12"
        port = free_port()
        stack.start("web", "serve", "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/status", timeout=60, process=stack.children["web"])
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{stack.output('web')[-3000:]}") from None
        status, _, body = request(
            url, "POST", "/api/v1/auth/token/", {"username": "kiosk", "password": PASSWORD}
        )
        assert status == 200, body
        yield {
            "url": url,
            "token": body["access"],
            "pg": pg_proxy,
            "redis": redis_proxy,
            "direct": direct,
            "stack": stack,
        }
    finally:
        codes = stack.close()
        pg_proxy.stop()
        redis_proxy.stop()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        cache.flushdb()
        cache.close()
    assert codes.get("web") == 0, stack.output("web")[-3000:]


class Load:
    """Machines polling and confirming (one per device), and kiosks vending to them in
    turn, each in a thread of its own.

    Every request is recorded as ``(kind, started, elapsed, status, headers, body)``; status
    ``None`` means no answer (connection error or the client's timeout). ``dispensed`` is
    the machines' own record: ``(device, slot, transaction id)`` of every VEND acted on.
    :attr:`drain` stops the kiosks only, so the machines can empty the queues."""

    def __init__(self, url: str, token: str, devices=(DEVICE,), kiosks: int = 1) -> None:
        self.url, self.token = url, token
        self.devices = list(devices)
        self.records: list[tuple] = []
        self.accepted: dict[str, str] = {}  # Idempotency-Key -> transaction id
        self.dispensed: list[tuple[str, int, str]] = []
        self.given_up: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.drain = threading.Event()
        self.threads = [
            threading.Thread(target=self._machine, args=(device,), name=f"dbfault-{device}")
            for device in self.devices
        ] + [
            threading.Thread(target=self._kiosk, args=(k,), name=f"dbfault-kiosk-{k}")
            for k in range(kiosks)
        ]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(HTTP_TIMEOUT * 3)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def call(self, kind, method, path, body=None, headers=None):
        started = time.monotonic()
        try:
            status, answer_headers, parsed = request(self.url, method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            status, answer_headers, parsed = None, {}, {"error": repr(exc)}
        record = (kind, started, time.monotonic() - started, status, answer_headers, parsed)
        with self.lock:
            self.records.append(record)
        return record

    def _machine(self, device: str) -> None:
        for _ in range(2000):  # with the pauses below, far more than the test runs
            if self.stop.is_set():
                return
            *_, status, _, body = self.call("poll", "GET", f"/esp32/commands/{device}")
            if status == 200 and isinstance(body, dict) and body.get("command") == "VEND":
                with self.lock:
                    self.dispensed.append((device, body["slot"], body.get("transaction_id")))
                confirmation = {"device_id": device, "slot": body["slot"], "success": True}
                for _ in range(40):  # the machine retries its confirmation until it lands
                    if self.call("confirm", "POST", "/esp32/confirm", confirmation)[3] == 200:
                        break
                    time.sleep(0.25)
            self.stop.wait(0.2)

    def _kiosk(self, kiosk: int = 0) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        for n in range(2000):
            if self.stop.is_set() or self.drain.is_set():
                return
            key = f"dbfault-{kiosk}-{n}-{secrets.token_hex(3)}"
            device = self.devices[(n + kiosk) % len(self.devices)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # same key until an answer that settles it
                *_, status, _, body = self.call(
                    "vend",
                    "POST",
                    f"/api/v1/vend/{n % 5 + 1}",
                    {"device_id": device},
                    {**auth, "Idempotency-Key": key},
                )
                if status in (200, 202):
                    with self.lock:
                        self.accepted[key] = body["id"]
                    break
                if (
                    status is not None
                    and status < 500
                    and body.get("code") != ("idempotency_key_in_use")
                ):
                    break  # refused for a reason of its own (recorded, checked below)
                time.sleep(0.2)
            else:
                with self.lock:
                    self.given_up.append(key)
            self.stop.wait(0.3)

    def since(self, moment: float) -> list[tuple]:
        with self.lock:
            return [r for r in self.records if r[1] >= moment]


def run_fault(stack, load: Load, backend: str, mode: str, seconds: float, latency_ms=0):
    """Fault on for ``seconds``, then off; returns what happened, timed."""
    proxy = stack[backend]
    began = time.monotonic()
    proxy.set_mode(mode, latency_ms=latency_ms)
    time.sleep(seconds)
    ended = time.monotonic()
    proxy.set_mode("pass")
    recovered = None
    for _ in range(int(RECOVERY * 20) + 40):  # RECOVERY + 2 s at most
        ok = [
            r for r in load.since(ended) if r[0] == "poll" and r[3] == 200 and r[1] + r[2] > ended
        ]
        if ok:
            recovered = min(r[1] + r[2] for r in ok) - ended
            break
        time.sleep(0.05)
    time.sleep(0.5)  # let requests started during the fault finish
    # Requests that were running at some moment from the fault's start on.
    records = [r for r in load.since(began - BOUND) if r[1] + r[2] >= began]
    first_503 = min((r[1] + r[2] for r in records if r[3] == 503), default=None)
    outcome = {
        "fault": f"{backend} {mode}" + (f" {latency_ms} ms" if latency_ms else ""),
        "requests": len(records),
        "statuses": dict(Counter((r[0], r[3]) for r in records)),
        "time_to_503": None if first_503 is None else round(first_503 - began, 2),
        "recovery": None if recovered is None else round(recovered, 2),
        "slowest": round(max((r[2] for r in records), default=0), 2),
        "records": records,
    }
    print(f"\n{ {k: v for k, v in outcome.items() if k != 'records'} }")
    return outcome


def check_answers(outcome) -> None:
    """Every request answered, in time, with 2xx/4xx or a proper 503."""
    for kind, _started, elapsed, status, headers, body in outcome["records"]:
        where = f"{outcome['fault']}: {kind} -> {status} after {elapsed:.2f} s: {body}"
        assert status is not None, f"no answer (hang or dropped connection): {where}"
        assert status < 500 or status == 503, where
        assert elapsed < BOUND, f"slower than {BOUND} s: {where}"
        if status == 503:
            assert int(headers.get("Retry-After", "0")) > 0, f"503 without Retry-After: {where}"
            assert body["code"] in {"database_unavailable", "redis_unavailable"}, where
            assert "unavailable, retry in" in body["detail"], where
    assert outcome["recovery"] is not None and outcome["recovery"] <= RECOVERY, (
        f"{outcome['fault']}: polls did not answer 200 within {RECOVERY} s of the fault ending"
    )


def transactions_in(database_url: str) -> dict[str, str]:
    connection = psycopg2.connect(database_url, connect_timeout=3)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id::text, idempotency_key FROM transactions_transaction")
            return dict(cursor.fetchall())
    finally:
        connection.close()


def test_database_and_redis_faults_answer_503_never_hang_and_recover(stack):
    outcomes = []
    with Load(stack["url"], stack["token"]) as load:
        time.sleep(1.5)  # a few polls and vends in calm weather first
        calm = load.since(0)
        assert any(r[0] == "vend" and r[3] == 202 for r in calm), calm[-5:]

        outcomes.append(run_fault(stack, load, "pg", "latency", 2.0, latency_ms=30))
        # Longer than the client's own deadline (statement timeout + 1 s = 3 s), so a
        # request caught at the hang's start answers 503 before the hang ends; at 3.0 s the
        # two raced, and polls of idle machines kept per worker no longer touch the database.
        outcomes.append(hang := run_fault(stack, load, "pg", "hang", STATEMENT_TIMEOUT + 2.5))
        outcomes.append(restart := run_fault(stack, load, "pg", "reset", 3.0))
        outcomes.append(redis_down := run_fault(stack, load, "redis", "reset", 3.0))
        outcomes.append(redis_hang := run_fault(stack, load, "redis", "hang", 3.0))
        time.sleep(1.0)
    for outcome in outcomes:
        check_answers(outcome)
    for outcome in (hang, restart):
        assert outcome["time_to_503"] is not None, f"{outcome['fault']} never answered 503"
    for outcome in (redis_down, redis_hang):
        statuses = outcome["statuses"]
        assert not [s for (kind, s) in statuses if s != 200 and kind == "poll"], statuses
        assert statuses.get(("poll", 200), 0) >= 3, statuses  # polls went on during the fault
        assert not [s for (kind, s) in statuses if kind == "vend" and s not in (200, 202)]

    # Nothing accepted is lost, nothing is vended that the kiosk was not told about.
    assert not load.given_up, f"vends never settled: {load.given_up}"
    stored = transactions_in(stack["direct"])
    accepted = set(load.accepted.values())
    assert accepted, "no vend was accepted"
    assert accepted <= set(stored), f"accepted but missing: {sorted(accepted - set(stored))}"
    assert set(stored) <= accepted, f"vended unannounced: {sorted(set(stored) - accepted)}"
    for key, txn_id in load.accepted.items():
        assert stored[txn_id] == key
