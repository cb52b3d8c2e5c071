"""Client, stack and checks for the fleet's generator (``bench/_fleet_generator.py``).

- :class:`Pool`: raw HTTP/1.1 keep-alive connections on asyncio Protocols (an answer
  resolves its request's future from ``data_received``: no stream reader, no task or timer
  per request), round-robin over the server's ports, bounded in number; a request waits for
  a free connection, and that wait counts in its latency (the caller measures from the
  scheduled time); a ``deadline`` gives up as the firmware does.
- :func:`fleet_stack`, :func:`prepare` and :func:`start_server`: the scratch stack
  (``tests.scratch``) set up for a fleet run: a scratch PostgreSQL database (``fleet_*``),
  Redis db 15, the machines and API keys, and the web server under test (granian, Daphne,
  uvicorn or gunicorn).
- :func:`account`: ``tests/accounting.py`` on the scratch database after a run.
- ``python bench/_fleet_load.py stub PORT``: a keep-alive server without Django (the
  generator's own floor and ceiling).

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.scratch.net import StackError, free_port  # noqa: E402
from tests.scratch.stack import Stack, web_argv  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/15"
FLEET_ENV = {
    "DEBUG": "false",
    "LOG_LEVEL": "WARNING",
    "WEB_ACCESS_LOG": "false",
    "SECURE_SSL_REDIRECT": "false",
}
SERVERS = ("granian", "daphne", "uvicorn", "gunicorn", "gunicorn-asgi", "stub")


# --- statistics ----------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(math.ceil(fraction * len(sorted_values)), 1)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(latencies_ms: list[float]) -> dict:
    values = sorted(latencies_ms)
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.50), 2),
        "p95": round(percentile(values, 0.95), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(values[-1], 2) if values else 0.0,
    }


# --- HTTP client ---------------------------------------------------------------------------


class HttpError(Exception):
    """The connection failed or the answer could not be read (counted as an error)."""


class _Stale(Exception):
    """A reused socket closed before any byte of the answer (the server's idle close)."""


def parse_response(buffer: bytes | bytearray) -> tuple[int, bytes, int, bool] | None:
    """One HTTP/1.1 answer at the start of ``buffer``: ``(status, body, bytes used, close)``,
    or None while incomplete. ``close``: the server said ``Connection: close``. An answer
    without a length (ended by the connection) is incomplete until the caller hands it
    over at the close. ValueError for bytes that are not an answer."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    if not head.startswith(b"http/1."):
        raise ValueError(f"not an HTTP answer: {head[:40]!r}")
    status = int(head[9:12])
    start = end + 4
    close = b"\r\nconnection: close" in head
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(buffer) < start + length:
            return None
        return status, bytes(buffer[start : start + length]), start + length, close
    if b"\r\ntransfer-encoding: chunked" in head:
        body, at = b"", start
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            if len(buffer) < line_end + 2 + size + 2:
                return None
            if size == 0:
                return status, body, line_end + 4, close
            body += bytes(buffer[line_end + 2 : line_end + 2 + size])
            at = line_end + 2 + size + 2
    return None  # ends with the connection


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight: the answer resolves
    the request's future from ``data_received`` (no stream reader, no task per request).
    A late answer is failed by :meth:`expire_if_late`, which the pool's sweeper calls ten
    times a second (cheaper than a timer per request)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.deadline = 0.0
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, raw: bytes, waiter: asyncio.Future, deadline: float) -> None:
        self.buffer.clear()
        self.waiter, self.deadline = waiter, deadline
        self.transport.write(raw)

    def _settle(self, result=None, error: Exception | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(result)

    def expire_if_late(self, now: float) -> None:
        if self.waiter is not None and now >= self.deadline:
            self.close()
            self._settle(error=HttpError("timeout"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        try:
            answer = parse_response(self.buffer)
        except ValueError as exc:
            self.close()
            self._settle(error=HttpError(str(exc)))
            return
        if answer is not None:
            status, body, used, close = answer
            del self.buffer[:used]
            if close:
                self.close()
            self._settle((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if not self.buffer:
            self._settle(error=_Stale())
        elif end >= 0 and b"content-length" not in self.buffer[:end].lower():
            # An answer without a length: its body is what came before the close.
            self._settle((int(self.buffer[9:12]), bytes(self.buffer[end + 4 :])))
        else:
            self._settle(error=HttpError(f"connection lost mid-answer: {exc}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Connection:
    """A pool's slot: one :class:`_Client` at a time to ``host:port``, reopened as needed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.client: _Client | None = None
        self.used = 0  # requests answered on the current socket

    async def open(self, timeout: float) -> None:
        """Connect now, if not connected (a request would otherwise connect when first sent)."""
        if self.client is None or self.client.closed:
            loop = asyncio.get_running_loop()
            try:
                _transport, self.client = await asyncio.wait_for(
                    loop.create_connection(_Client, self.host, self.port), timeout
                )
            except (TimeoutError, OSError) as exc:
                self.client = None
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
            self.used = 0

    async def request(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        """Send one request (bytes as on the wire) and read the answer; closes on any error.

        A reused socket the server closed while idle (closed before any byte of the answer)
        is reopened and the request sent once more; nothing reached the application."""
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            fresh = self.client is None or self.client.closed
            await self.open(timeout)
            waiter = loop.create_future()
            try:
                self.client.send(raw, waiter, time.monotonic() + timeout)
                answer = await waiter
            except _Stale:
                if attempt == 0 and not fresh:
                    continue
                raise HttpError("connection closed before the answer") from None
            except HttpError:
                self.close()
                raise
            self.used += 1
            return answer
        raise HttpError("unreachable")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    """A request as on the wire (a JSON body gets its type and length)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Pool:
    """At most ``size`` connections, spread round-robin over ``ports``.

    By default a connection opens when it is first needed and the last one returned is
    reused first (LIFO), so the open connections follow the load's peak concurrency.
    ``steady``: every connection takes its turn (FIFO), so once :meth:`open_all` has run the
    same ``size`` stay open and busy, whatever the latency: the server's socket count then
    moves only if the server itself opens or drops connections (``bench/soak.py``)."""

    def __init__(
        self, ports: list[int], size: int, host: str = "127.0.0.1", *, steady: bool = False
    ) -> None:
        self.connections: list[Connection] = [
            Connection(host, ports[i % len(ports)]) for i in range(size)
        ]
        self.waiters: asyncio.Queue[Connection] = asyncio.Queue() if steady else asyncio.LifoQueue()
        for connection in self.connections:
            self.waiters.put_nowait(connection)
        self.sweeper: asyncio.Task | None = None

    async def _sweep(self) -> None:
        """Fail the requests whose answer is late (their connection is closed)."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for connection in self.connections:
                if connection.client is not None:
                    connection.client.expire_if_late(now)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict | None = None,
        timeout: float = 3.0,
    ) -> tuple[int, bytes]:
        return await self.send(request_bytes(method, path, body, headers), timeout)

    async def send(
        self, raw: bytes, timeout: float = 3.0, *, deadline: float | None = None
    ) -> tuple[int, bytes]:
        """``raw`` (:func:`request_bytes`) on the next free connection; waits for one.

        ``deadline`` (``time.monotonic()``): the caller gives up then, as the firmware does 3 s
        after it sent, whether or not a connection was free: the request is not sent after
        it, and an answer after it is a timeout."""
        if self.sweeper is None:
            self.sweeper = asyncio.ensure_future(self._sweep())
        connection = await self.waiters.get()
        try:
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise HttpError("timeout (waited for a connection)")
            return await connection.request(raw, timeout)
        finally:
            self.waiters.put_nowait(connection)

    async def open_all(self, timeout: float = 5.0) -> None:
        await asyncio.gather(*(connection.open(timeout) for connection in self.connections))

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for connection in self.connections:
            connection.close()


# --- the stack ---------------------------------------------------------------------------


def server_commands(server: str, ports: list[int], gunicorn_worker: str) -> list[list[str]]:
    """The command lines of the server under test; access logs off for every server."""
    python = sys.executable
    if server == "daphne":
        # What `manage.py serve` ran before granian (Daphne's CLI), one process per port as
        # in Procfile.prod-local, without the access log.
        line = f"-m daphne -b 127.0.0.1 --access-log {os.devnull}"
        return [
            [python, *line.split(), "-p", str(port), "vending_site.asgi:application"]
            for port in ports
        ]
    if server == "uvicorn":
        # One process per port (Daphne's topology); the project has no lifespan handlers,
        # so lifespan is off (Channels' router rejects the scope).
        line = (
            "-m uvicorn vending_site.asgi:application --host 127.0.0.1 --lifespan off "
            "--no-access-log --timeout-keep-alive 30 --log-level warning"
        )
        return [[python, *line.split(), "--port", str(port)] for port in ports]
    if server == "granian":
        # The production web server as shipped (deploy/web.py, started the way the tests
        # start it): WEB_WORKERS x WEB_THREADS (default 2 x 8) on one port; the access log
        # is off through WEB_ACCESS_LOG in the stack's environment.
        return [web_argv(f"127.0.0.1:{ports[0]}")]
    common = f"--bind 127.0.0.1:{ports[0]} --timeout 60 --log-level warning"
    if server == "gunicorn":
        # gunicorn's WSGI workers, the production server before granian, kept for the
        # comparison: the same workers x threads, keep-alive 75 s, no access log.
        line = (
            f"-m gunicorn vending_site.wsgi:application {common} "
            f"--workers {os.environ.get('WEB_WORKERS', '2')} "
            f"--threads {os.environ.get('WEB_THREADS', '8')} --worker-class {gunicorn_worker} "
            f"--keep-alive 75 --access-logfile {os.devnull}"
        )
        return [[python, *line.split()]]
    if server == "gunicorn-asgi":
        # gunicorn 27's own asyncio ASGI worker ("-k asgi").
        line = f"-m gunicorn vending_site.asgi:application {common} -w 2 -k asgi --keep-alive 30"
        return [[python, *line.split()]]
    if server == "stub":
        # No Django: measures the generator alone (its ceiling and its own latency floor).
        return [[python, str(Path(__file__)), "stub", str(port)] for port in ports]
    raise ValueError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")


def fleet_stack(workdir_prefix: str = "fleet_bench_") -> Stack:
    """A :class:`~tests.scratch.stack.Stack` with the settings as shipped (throttles
    included), quiet logs and no HTTPS redirect; its work directory (the servers' logs) is
    kept after :meth:`~tests.scratch.stack.Stack.close`."""
    return Stack(FLEET_ENV, Path(tempfile.mkdtemp(prefix=workdir_prefix)))


def prepare(
    stack: Stack,
    *,
    devices: int,
    keys: int,
    stock: int,
    db_prefix: str = "fleet_",
    redis_url: str = REDIS_URL,
) -> dict:
    """A scratch database ``<db_prefix>*`` (migrated), Redis ``redis_url`` flushed (``""``:
    none), ``devices`` machines with ``stock`` units per slot and ``keys`` API keys;
    ``{"keys": [...], "devices": n}``."""
    stack.create_database(db_prefix)
    if redis_url:
        stack.use_redis(redis_url)
    return stack.seed_fleet(devices=devices, keys=keys, stock=stock)


def start_server(
    stack: Stack,
    server: str,
    *,
    gunicorn_worker: str = "gthread",
    conn_max_age: int = 0,
    timeout: float = 120,
) -> list[int]:
    """Start the server under test (logs ``<server>-<n>.log``, label ``server``) and wait
    until every port answers ``/health`` (``/status`` lists every machine: slow with
    thousands of them); its ports. :meth:`~tests.scratch.stack.Stack.stop` ends it."""
    count = 2 if server in ("daphne", "uvicorn", "stub") else 1
    ports = [free_port() for _ in range(count)]
    env = {"CONN_MAX_AGE": str(conn_max_age)}
    for index, argv in enumerate(server_commands(server, ports, gunicorn_worker)):
        stack.start_argv(f"{server}-{index}", argv, env=env, label=server)
    for index, port in enumerate(ports):
        stack.wait_ready(f"{server}-{index}", f"http://127.0.0.1:{port}/health", timeout)
    return ports


class CpuMeter:
    """CPU seconds used by a set of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, processes) -> None:
        self.processes = list(processes)

    @staticmethod
    def _total(processes) -> float:
        import psutil

        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass  # a worker that went away
        return total

    def start(self) -> None:
        import psutil

        self.begin = self._total(self.processes)
        self.machine_begin = psutil.cpu_times()
        self.wall_begin = time.monotonic()

    def stop(self) -> dict:
        import psutil

        wall = time.monotonic() - self.wall_begin
        used = self._total(self.processes) - self.begin
        machine = psutil.cpu_times()
        busy = sum(
            getattr(machine, f) - getattr(self.machine_begin, f)
            for f in ("user", "system", "nice", "irq", "softirq", "steal")
        )
        return {
            "cpu_seconds": round(used, 2),
            "cpu_pct": round(100 * used / wall, 1) if wall else 0.0,  # of one core
            "machine_busy_pct": round(100 * busy / wall / (os.cpu_count() or 1), 1),
        }


# --- the accounting check ------------------------------------------------------------


def account(stack: Stack, last_movement: int, stats: dict, *, timeout: float = 60.0) -> dict:
    """tests/accounting.py on the scratch database, in a child process (Django there):
    stock per slot by vends and by ledger since ``last_movement``, and the outcomes of the
    vends ``stats["accepted"]`` against the machines' ``stats["dispensed"]``; ``ok`` when
    nothing is lost, doubled or unexplained."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=stack.workdir, delete=False) as f:
        json.dump(
            {
                "last_movement": last_movement,
                "accepted": stats["accepted"],
                "dispensed": stats["dispensed"],
            },
            f,
        )
    try:
        out = stack.run(str(Path(__file__)), "account", f.name, timeout=timeout)
    except StackError as exc:
        return {"ok": False, "line": "accounting failed to run", "error": str(exc)[-3000:]}
    return json.loads(out.strip().splitlines()[-1])


def _account_child(path: str) -> dict:
    """The child's side: stock per slot by vends and by ledger, and the outcomes from the
    machines' records (``dispensed``) against the vends clients were told were accepted."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    django.setup()
    from tests import accounting

    data = json.loads(Path(path).read_text())
    figures = accounting.slot_figures(accounting.start_at_movement(data["last_movement"]))
    stock_problems = [text for slot in figures for text in slot.problems()]
    vends = accounting.accepted_vends(data["accepted"])
    dispensed = [
        accounting.Dispense(device_id=d, slot=s, transaction_id=t) for d, s, t in data["dispensed"]
    ]
    outcomes = accounting.count_outcomes(vends, dispensed)
    still_open = [v.transaction_id for v in vends if v.state in accounting.OPEN]
    try:
        outcomes.check()
        outcome_problems = ""
    except AssertionError as exc:
        outcome_problems = str(exc)
    return {
        "ok": not stock_problems and not outcome_problems,
        "line": outcomes.line(),
        "slots": len(figures),
        "stock_problems": stock_problems[:20],
        "stock_problem_count": len(stock_problems),
        "outcome_problems": outcome_problems[:3000],
        "still_open": len(still_open),
        "lost": len(outcomes.lost),
        "duplicated": len(outcomes.duplicated),
        "unexpected": len(outcomes.unexpected),
        "dispensed_but_refunded": len(outcomes.dispensed_but_refunded),
        "unconfirmed_undelivered": len(outcomes.unconfirmed_undelivered),
        "credited_to_another_vend": len(outcomes.credited_to_another_vend),
    }


# --- the stub server ----------------------------------------------------------------------


class _StubServer(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server without Django that answers every request at once:
    ``null`` to a poll, ``{"status": "ignored"}`` to a confirm, 202 with an id to a vend."""

    vends = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = 0
            at = head.lower().find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/api/v1/vend/"):
                _StubServer.vends += 1
                status = b"202 Accepted"
                body = b'{"id": %d, "state": "queued"}' % _StubServer.vends
            elif path == b"/esp32/confirm":
                status, body = b"200 OK", b'{"status": "ignored"}'
            else:
                status, body = b"200 OK", b"null"
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )


async def _stub(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_StubServer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if argv[:1] == ["account"]:
        sys.stdout.write("\n" + json.dumps(_account_child(argv[1])) + "\n")
    elif argv[:1] == ["stub"]:
        asyncio.run(_stub(int(argv[1])))
    else:
        raise SystemExit(f"unknown command {argv[:1]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
