"""Shared pieces of the benchmark suite: percentiles, an open-loop load generator, the
benchmarks' settings and their scratch stack (``tests.scratch``: a scratch PostgreSQL
database, Redis database 14 and the project's real processes). See bench/CONTRACT.md for
the scenario contract.

Everything here talks to loopback only, and every wait is bounded.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.scratch import databases  # noqa: E402
from tests.scratch.net import Client  # noqa: E402
from tests.scratch.stack import PASSWORD, Stack  # noqa: E402

# BENCH_DB_PREFIX lets runs that share a PostgreSQL server keep to their own names.
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "bench_")
# Settings every scenario's processes get: quiet logs, rate limits out of the way (the
# benchmark measures latency, not the throttles), devices online for the whole run.
BASE_ENV = {
    "LOG_LEVEL": "WARNING",
    "WEB_ACCESS_LOG": "false",
    "API_THROTTLE_VEND": "1000000/min",
    "API_THROTTLE_USER": "1000000/min",
    "API_THROTTLE_ANON": "1000000/min",
    "DEVICE_THROTTLE": "1000000/min",
    "DEVICE_ADDRESS_THROTTLE": "1000000/min",
    "DEBUG": "false",
}


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks and context managers stop the
    children and drop the scratch database when the benchmark itself is terminated."""

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


# --- figures --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; 0.0 for an empty list."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))  # ceil(q * n), at least 1
    return ordered[rank - 1]


def summarize(latencies_s: list[float]) -> dict:
    """``{"count", "p50", "p95", "p99", "max"}`` of latencies given in seconds, in ms."""
    ms = [value * 1000.0 for value in latencies_s]
    return {
        "count": len(ms),
        "p50": round(percentile(ms, 0.50), 3),
        "p95": round(percentile(ms, 0.95), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "max": round(max(ms), 3) if ms else 0.0,
    }


def make_row(
    metric: str,
    latencies_s: list[float],
    *,
    errors: int = 0,
    target: str = "",
    limit_ms: float | None = None,
    stat: str = "p99",
    **extra,
) -> dict:
    """One row of the contract. ``met`` is ``summary[stat] < limit_ms`` (and no errors),
    ``None`` when there is no target or nothing was measured."""
    row = {"metric": metric, "unit": "ms", "errors": int(errors), **summarize(latencies_s)}
    if limit_ms is None or not latencies_s:
        met = None
    else:
        met = bool(row[stat] < limit_ms and errors == 0)
    row.update(target=target, met=met, **extra)
    return row


# --- open-loop load -------------------------------------------------------------------------


@dataclass
class Outcome:
    """One scheduled request: ``latency`` runs from its *scheduled* send time to its end."""

    index: int
    scheduled: float  # monotonic
    started: float
    latency: float
    ok: bool
    detail: object = None


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    not_sent: int = 0  # scheduled but never started before the time bound
    elapsed: float = 0.0

    def latencies(self, ok: bool = True) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok == ok]

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok) + self.not_sent

    @property
    def max_start_lag(self) -> float:
        """How late the generator itself started requests (should stay small)."""
        return max((o.started - o.scheduled for o in self.outcomes), default=0.0)


def open_loop(
    call: Callable[[int], tuple[bool, object]],
    *,
    rate: float,
    count: int,
    concurrency: int = 50,
    max_seconds: float = 120.0,
    offsets: list[float] | None = None,
) -> LoadResult:
    """Fire ``count`` calls at ``rate`` per second on a fixed schedule, at most
    ``concurrency`` in flight (one thread each).

    Request ``i`` is due at ``t0 + i / rate`` whatever happened to the others; its latency
    is measured from that due time, so when the server (or the pool) falls behind, the
    queueing shows in the figures instead of being hidden (no coordinated omission).
    ``call(i)`` returns ``(ok, detail)`` and may raise (counted as an error). Nothing is
    started after ``max_seconds``; what was still due then counts in ``not_sent``.
    ``offsets`` (sorted, seconds from the start, one per call) replaces the even spacing,
    for schedules with jitter; ``rate`` is then ignored.
    """
    if offsets is not None:
        count = len(offsets)
    result = LoadResult()
    lock = threading.Lock()
    next_index = [0]
    t0 = time.monotonic() + 0.05
    stop_at = t0 + max_seconds

    def worker() -> None:
        while True:
            with lock:
                index = next_index[0]
                if index >= count:
                    return
                next_index[0] += 1
            due = t0 + (offsets[index] if offsets is not None else index / rate)
            if due >= stop_at:
                with lock:
                    result.not_sent += 1
                continue
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            started = time.monotonic()
            try:
                ok, detail = call(index)
            except Exception as exc:  # noqa: BLE001 - a failed request is a figure, not a crash
                ok, detail = False, repr(exc)
            outcome = Outcome(index, due, started, time.monotonic() - due, bool(ok), detail)
            with lock:
                result.outcomes.append(outcome)

    threads = [
        threading.Thread(target=worker, daemon=True, name=f"load-{n}")
        for n in range(max(1, min(concurrency, count)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, stop_at + 30 - time.monotonic()))
    result.elapsed = time.monotonic() - t0
    result.outcomes.sort(key=lambda o: o.index)
    return result


# --- HTTP and the stack -------------------------------------------------------------------


def thread_client(base_urls: list[str], headers: dict | None = None) -> Callable[[], object]:
    """A function returning this thread's own :class:`Client`; threads are spread
    round-robin over ``base_urls`` (one connection per thread, as a kiosk would keep)."""
    local = threading.local()
    counter = iter(range(1 << 30))
    lock = threading.Lock()

    def get() -> Client:
        client = getattr(local, "client", None)
        if client is None:
            with lock:
                n = next(counter)
            client = local.client = Client(base_urls[n % len(base_urls)], headers=headers)
        return client

    return get


def get_token(base_url: str, username: str, password: str = PASSWORD) -> str:
    """A JWT access token (bounded retries while the server starts)."""
    client = Client(base_url)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                status, body = client.json(
                    "POST", "/api/v1/auth/token/", {"username": username, "password": password}
                )
                if status == 200:
                    return body["access"]
                raise RuntimeError(f"token: HTTP {status} {body}")
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        client.close()


def redis_url() -> str:
    """BENCH_REDIS_URL as given; else REDIS_URL's server (or 127.0.0.1:6379), database 14
    (flushed by every stack: never REDIS_URL's own database, the developer's data)."""
    return os.environ.get("BENCH_REDIS_URL") or databases.redis_url(14)


def services_available() -> str:
    """'' when PostgreSQL and the benchmarks' Redis database answer, else what is missing."""
    return databases.services_available(redis_url())


def bench_stack(env: dict[str, str] | None = None, *, postgres: bool = True) -> Stack:
    """A :class:`~tests.scratch.stack.Stack` with the benchmarks' settings (:data:`BASE_ENV`,
    devices online and vends queued for the whole run) and ``env`` on top: a scratch
    PostgreSQL database ``bench_*`` cloned from the migrated template and Redis database 14
    flushed, or (``postgres=False``) a migrated SQLite file and the in-memory channel layer.

        with bench_stack({"DEVICE_OFFLINE_AFTER": "60"}) as stack:
            urls = stack.start_workers(2)
            stack.seed(devices=["ESP32_..."], stock=[100] * 5)
            token = get_token(urls[0], stack.username)
    """
    stack = Stack(
        {**BASE_ENV, "DEVICE_OFFLINE_AFTER": "86400", "VEND_QUEUE_TTL": "3600", **(env or {})}
    )
    try:
        if postgres:
            stack.create_database(DB_PREFIX)
            stack.use_redis(redis_url())
        else:
            stack.use_sqlite()
    except BaseException:
        stack.close()
        raise
    return stack


def machine_info() -> dict:
    """What the figures were measured on."""
    import platform

    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
        load = [round(x, 2) for x in psutil.getloadavg()]
    except (ImportError, OSError):
        memory, load = None, None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    postgres = ""
    try:
        import psycopg2

        connection = psycopg2.connect(databases.pg_admin_url(), connect_timeout=3)
        try:
            postgres = connection.server_version
        finally:
            connection.close()
    except Exception:  # noqa: BLE001 - no psycopg2 or no server: the figure is "unknown"
        pass
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "memory_gib": memory,
        "load_average": load,
        "python": platform.python_version(),
        "db": f"PostgreSQL {postgres // 10000}.{postgres % 10000}" if postgres else "unknown",
        "redis_url": redis_url(),
        "git_commit": commit + ("-dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
