"""Shared pieces of the benchmark suite: percentiles, an open-loop load generator, a
keep-alive HTTP client and a scratch stack (PostgreSQL database, Redis database 14 and the
project's real processes). See bench/CONTRACT.md for the scenario contract.

Everything here talks to loopback only, and every wait is bounded.
"""

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
# BENCH_DB_PREFIX lets runs that share a PostgreSQL server keep to their own names.
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "bench_")
PASSWORD = "bench-password-1"
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


# --- HTTP -------------------------------------------------------------------------------------


class KeepAliveClient:
    """One persistent HTTP/1.1 connection to ``base_url`` (reopened after an error).

    Not thread-safe: give each load thread its own (see :func:`thread_client`).
    """

    def __init__(self, base_url: str, timeout: float = 10.0, headers: dict | None = None):
        parts = urlsplit(base_url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"benchmarks stay on loopback, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.connection: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: object = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """``(status, body)``; a connection error propagates after one retry on a fresh
        connection when the kept one turned out to be closed by the server."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", **self.headers, **(headers or {})}
        for attempt in (1, 2):
            fresh = self.connection is None
            if fresh:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
            try:
                self.connection.request(method, path, body=data, headers=all_headers)
                response = self.connection.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt == 2:
                    raise
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: object = None, headers: dict | None = None):
        status, payload = self.request(method, path, body, headers)
        return status, (json.loads(payload) if payload.strip() else None)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def thread_client(base_urls: list[str], headers: dict | None = None) -> Callable[[], object]:
    """A function returning this thread's own :class:`KeepAliveClient`; threads are spread
    round-robin over ``base_urls`` (one connection per thread, as a kiosk would keep)."""
    local = threading.local()
    counter = iter(range(1 << 30))
    lock = threading.Lock()

    def get() -> KeepAliveClient:
        client = getattr(local, "client", None)
        if client is None:
            with lock:
                n = next(counter)
            client = local.client = KeepAliveClient(base_urls[n % len(base_urls)], headers=headers)
        return client

    return get


def get_token(base_url: str, username: str, password: str = PASSWORD) -> str:
    """A JWT access token (bounded retries while the server starts)."""
    client = KeepAliveClient(base_url)
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


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Until ``url`` (a loopback URL) answers 200; fails early if ``process`` exits."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        client = KeepAliveClient(f"http://{parts.hostname}:{parts.port}", timeout=2)
        try:
            status, _ = client.request("GET", parts.path or "/")
            if status == 200:
                return
        except OSError:
            pass
        finally:
            client.close()
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on right now (``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- PostgreSQL and Redis ------------------------------------------------------------------------


def pg_admin_url() -> str:
    """The maintenance database of the server named by DATABASE_URL (if PostgreSQL), else
    postgres@127.0.0.1:5432."""
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith(("postgres://", "postgresql://")):
        return DEFAULT_PG
    parts = urlsplit(configured)
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))


def redis_url() -> str:
    """BENCH_REDIS_URL as given; else REDIS_URL's server (or 127.0.0.1:6379), database 14.

    The benchmark flushes this database, so it never takes a database number from
    REDIS_URL, which names the developer's own data.
    """
    if os.environ.get("BENCH_REDIS_URL"):
        return os.environ["BENCH_REDIS_URL"]
    configured = os.environ.get("REDIS_URL", "")
    if not configured.startswith(("redis://", "rediss://")):
        return DEFAULT_REDIS
    parts = urlsplit(configured)
    return urlunsplit((parts.scheme, parts.netloc, "/14", "", ""))


def database_url(name: str) -> str:
    parts = urlsplit(pg_admin_url())
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def _admin_sql(*statements: str) -> None:
    import psycopg2

    connection = psycopg2.connect(pg_admin_url(), connect_timeout=5)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def services_available() -> str:
    """'' when PostgreSQL and Redis answer, else what is missing."""
    missing = []
    try:
        _admin_sql("SELECT 1")
    except (ImportError, OSError, psycopg2_error()) as exc:
        missing.append(f"PostgreSQL ({pg_admin_url()}): {exc}".strip())
    try:
        import redis

        client = redis.Redis.from_url(redis_url(), socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (ImportError, OSError, redis_error()) as exc:
        missing.append(f"Redis ({redis_url()}): {exc}")
    return "; ".join(missing)


def psycopg2_error() -> type[Exception]:
    import psycopg2

    return psycopg2.Error


def redis_error() -> type[Exception]:
    import redis

    return redis.RedisError


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(redis_url(), socket_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


_template: dict[str, str] = {}
_template_lock = threading.Lock()


def _migrated_template() -> str:
    """A migrated ``bench_tpl_<pid>`` database, made once per benchmark process (dropped at
    exit); scenarios clone it instead of migrating each time."""
    with _template_lock:
        inherited = os.environ.get("BENCH_TEMPLATE_DB", "")
        if "name" not in _template and inherited.startswith(DB_PREFIX):
            _template["name"] = inherited  # made (and dropped at exit) by the parent process
        if "name" not in _template:
            import atexit

            name = f"{DB_PREFIX}tpl_{os.getpid()}_{secrets.token_hex(3)}"
            _admin_sql(f'CREATE DATABASE "{name}"')
            atexit.register(drop_database, name)
            env = dict(os.environ, **BASE_ENV, DATABASE_URL=database_url(name))
            env["DATA_DIR"] = tempfile.mkdtemp(prefix="vending-bench-tpl-")
            try:
                subprocess.run(
                    [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    timeout=180,
                    capture_output=True,
                )
            finally:
                shutil.rmtree(env["DATA_DIR"], ignore_errors=True)
            _template["name"] = name
        return _template["name"]


def template_database() -> str:
    """The migrated template's name (made now if need be), for a child process's
    ``BENCH_TEMPLATE_DB`` so it clones it too instead of migrating again."""
    return _migrated_template()


def create_database() -> str:
    """A migrated scratch database ``bench_<pid>_<hex>``; returns its name."""
    template = _migrated_template()
    name = f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    _admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(name: str) -> None:
    if not name.startswith(DB_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a benchmark database")
    try:
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except (OSError, psycopg2_error()) as exc:  # best effort; say so rather than hide it
        print(f"bench: could not drop {name}: {exc}", file=sys.stderr)


# --- the stack --------------------------------------------------------------------------------


class ScratchStack:
    """A scratch PostgreSQL database (cloned from a migrated template), Redis database 14
    flushed, and the project's processes started with one environment (``env`` = the
    settings under test). Use as a context manager: every child is SIGTERMed, then
    SIGKILLed after 10 s, the database dropped and Redis flushed, whatever happened.

        with ScratchStack({"DEVICE_LONG_POLL_SECONDS": "1.5"}) as stack:
            urls = stack.start_workers(2)
            stack.seed(devices=["ESP32_..."], stock=[100] * 5)
            token = get_token(urls[0], stack.username)
    """

    def __init__(self, env: dict[str, str] | None = None, *, postgres: bool = True):
        self.postgres = postgres
        self.tmp = Path(tempfile.mkdtemp(prefix="vending-bench-"))
        self.database = ""
        self.username = "bench"
        self.children: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}
        self.env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            DATA_DIR=str(self.tmp),
            PROMETHEUS_MULTIPROC_DIR=str(self.tmp / "metrics"),
            SECRET_KEY=secrets.token_urlsafe(40),
            DEVICE_OFFLINE_AFTER="86400",
            VEND_QUEUE_TTL="3600",
            **BASE_ENV,
        )
        self.env.update(env or {})

    def __enter__(self) -> "ScratchStack":
        try:
            if self.postgres:
                self.database = create_database()
                self.env["DATABASE_URL"] = database_url(self.database)
                self.env["REDIS_URL"] = redis_url()
                flush_redis()
            else:
                self.env["DATABASE_URL"] = f"sqlite:///{self.tmp / 'db.sqlite3'}"
                self.env.pop("REDIS_URL", None)
                self.run("manage.py", "migrate", "--noinput", "-v", "0", timeout=180)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def database_label(self) -> str:
        return "PostgreSQL + Redis" if self.postgres else "SQLite, in-memory channel layer"

    def run(self, *args: str, timeout: float = 120.0) -> str:
        """A command (``manage.py ...`` or ``-m module ...``) run to completion; its stdout."""
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """``manage.py <args>`` in the background, output to a log file in the scratch dir."""
        return self.start_argv(name, [sys.executable, "manage.py", *args])

    def start_argv(self, name: str, argv: list[str]) -> subprocess.Popen:
        """``argv`` in the background, output to a log file in the scratch dir."""
        log = open(self.tmp / f"{name}.log", "w")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # our SIGTERM alone stops it, not the terminal's Ctrl-C
        )
        self.children[name] = process
        self._logs[name] = log
        return process

    def output(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_workers(self, count: int, timeout: float = 90.0) -> list[str]:
        """``count`` Daphne workers (``manage.py serve``) on free ports; their base URLs
        once each answers ``/health``."""
        urls = []
        for n in range(count):
            port = free_port()
            self.start(
                f"web{n}",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--access-log",
                "/dev/null",
            )
            urls.append(f"http://127.0.0.1:{port}")
        for n, url in enumerate(urls):
            try:
                wait_http(f"{url}/health", timeout=timeout, process=self.children[f"web{n}"])
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{self.output(f'web{n}')[-3000:]}") from None
        return urls

    def start_web(self, timeout: float = 90.0) -> list[str]:
        """The production web tier: granian as shipped (``deploy/web.py``: ``WEB_WORKERS``
        x ``WEB_THREADS`` WSGI threads, persistent connections) on a free port, without the
        access log; its base URL (a list, as :meth:`start_workers`) once it answers
        ``/health``."""
        from tests.integration.scratch_stack import web_argv

        port = free_port()
        self.start_argv("web", web_argv(f"127.0.0.1:{port}"))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", timeout=timeout, process=self.children["web"])
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.output('web')[-3000:]}") from None
        return [url]

    def wait_output(self, name: str, needle: str, timeout: float = 30.0) -> str:
        """The child's first log line containing ``needle`` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output(name).splitlines():
                if needle in line:
                    return line
            process = self.children[name]
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not print {needle!r}:\n{self.output(name)[-3000:]}")

    def seed(self, devices: list[str], stock: list[int]) -> None:
        """Register ``devices`` (WiFi, firmware v2.1), give each slot a product and
        ``stock[i]`` units, and create the vend-client user :attr:`username`."""
        self.run(
            "-m",
            "tests.integration.scratch_stack",
            "setup",
            json.dumps(
                {
                    "devices": devices,
                    "stock": stock,
                    "username": self.username,
                    "password": PASSWORD,
                }
            ),
        )

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read-only query on the scratch PostgreSQL database."""
        import psycopg2

        connection = psycopg2.connect(self.env["DATABASE_URL"], connect_timeout=5)
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def close(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.children.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log in self._logs.values():
            log.close()
        self.children.clear()
        self._logs.clear()
        if self.database:
            drop_database(self.database)
            self.database = ""
            try:
                flush_redis()
            except (OSError, redis_error()):
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


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

        connection = psycopg2.connect(pg_admin_url(), connect_timeout=3)
        try:
            postgres = connection.server_version
        finally:
            connection.close()
    except (ImportError, OSError, psycopg2_error()):
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
