"""Load-generator and stack helpers for ``bench/fleet_polling.py``.

- :class:`Pool`: raw HTTP/1.1 keep-alive connections over asyncio streams, round-robin over
  the server's ports, bounded in number; a request waits for a free connection, and that
  wait counts in its latency (the caller measures from the scheduled time).
- :func:`fleet_stack`, :func:`prepare` and :func:`start_server`: the scratch stack
  (``tests.scratch``) set up for a fleet run: a scratch PostgreSQL database (``fleet_*``),
  Redis db 15, the machines and API keys, and the web server under test (granian, Daphne,
  uvicorn or gunicorn).
- ``python bench/_fleet_load.py stub PORT``: a keep-alive server without Django (the
  generator's own floor).

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.scratch.net import free_port  # noqa: E402
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


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0  # requests answered on the current socket

    async def open(self, timeout: float) -> None:
        """Connect now, if not connected (a request would otherwise connect when first sent)."""
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), timeout
                )
            except (TimeoutError, OSError) as exc:
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
            self.used = 0

    async def request(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        """Send one request (bytes as on the wire) and read the answer; closes on any error.

        A reused socket the server closed while idle (EOF before any byte of the answer)
        is reopened and the request sent once more; nothing reached the application."""
        for attempt in (0, 1):
            fresh = self.writer is None
            try:
                if fresh:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), timeout
                    )
                    self.used = 0
                self.writer.write(raw)
                return await asyncio.wait_for(self._read(), timeout)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self.close()
                stale = not fresh and isinstance(exc, asyncio.IncompleteReadError)
                if attempt == 0 and stale and not exc.partial:
                    continue
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
            except TimeoutError:
                self.close()
                raise HttpError("timeout") from None
            except OSError as exc:
                self.close()
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
        raise HttpError("unreachable")

    async def _read(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:  # no length: the body ends with the connection
            body = await self.reader.read()
            self.close()
            return status, body
        self.used += 1
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


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

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict | None = None,
        timeout: float = 3.0,
    ) -> tuple[int, bytes]:
        connection = await self.waiters.get()
        try:
            lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
            for name, value in (headers or {}).items():
                lines.append(f"{name}: {value}")
            if body or method in ("POST", "PUT", "PATCH"):
                lines.append("Content-Type: application/json")
                lines.append(f"Content-Length: {len(body)}")
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
            return await connection.request(raw, timeout)
        finally:
            self.waiters.put_nowait(connection)

    async def open_all(self, timeout: float = 5.0) -> None:
        await asyncio.gather(*(connection.open(timeout) for connection in self.connections))

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


# --- the stack ---------------------------------------------------------------------------


def server_commands(server: str, ports: list[int], gunicorn_worker: str) -> list[list[str]]:
    """The command lines of the server under test; access logs off for every server."""
    python = sys.executable
    if server == "daphne":
        # What `manage.py serve` runs (Daphne's CLI), one process per port as in
        # Procfile.prod-local, without the access log.
        return [
            [
                python,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--access-log",
                os.devnull,
                "vending_site.asgi:application",
            ]
            for port in ports
        ]
    if server == "uvicorn":
        # One process per port (the same topology as Daphne's); the project has no
        # lifespan handlers, so lifespan is off (Channels' router rejects the scope).
        return [
            [
                python,
                "-m",
                "uvicorn",
                "vending_site.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--lifespan",
                "off",
                "--no-access-log",
                "--timeout-keep-alive",
                "30",
                "--log-level",
                "warning",
            ]
            for port in ports
        ]
    if server == "granian":
        # The production web server as shipped (deploy/web.py, started the way the tests
        # start it): WEB_WORKERS x WEB_THREADS (default 2 x 8) on one port; the access log
        # is off through WEB_ACCESS_LOG in the stack's environment.
        return [web_argv(f"127.0.0.1:{ports[0]}")]
    if server == "gunicorn":
        # gunicorn's WSGI workers, the production server before granian, kept for the
        # comparison: the same workers x threads, keep-alive 75 s, 60 s worker timeout, no
        # access log.
        return [
            [
                python,
                "-m",
                "gunicorn",
                "vending_site.wsgi:application",
                "--bind",
                f"127.0.0.1:{ports[0]}",
                "--workers",
                os.environ.get("WEB_WORKERS", "2"),
                "--threads",
                os.environ.get("WEB_THREADS", "8"),
                "--worker-class",
                gunicorn_worker,
                "--keep-alive",
                "75",
                "--timeout",
                "60",
                "--access-logfile",
                os.devnull,
                "--log-level",
                "warning",
            ]
        ]
    if server == "gunicorn-asgi":
        # gunicorn 27's own asyncio ASGI worker ("-k asgi").
        return [
            [
                python,
                "-m",
                "gunicorn",
                "vending_site.asgi:application",
                "-b",
                f"127.0.0.1:{ports[0]}",
                "-w",
                "2",
                "-k",
                "asgi",
                "--keep-alive",
                "30",
                "--timeout",
                "60",
                "--log-level",
                "warning",
            ]
        ]
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


# --- the stub server ----------------------------------------------------------------------


async def _stub(port: int) -> None:
    """A keep-alive HTTP/1.1 server that answers every request at once, without Django:
    ``null`` to a poll, ``{"status": "ignored"}`` to a confirm, 202 to a vend."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/api/v1/vend/"):
                    status, body = b"202 Accepted", b'{"state": "queued"}'
                elif path == b"/esp32/confirm":
                    status, body = b"200 OK", b'{"status": "ignored"}'
                else:
                    status, body = b"200 OK", b"null"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if argv[0] != "stub":
        raise SystemExit(f"unknown command {argv[0]!r}")
    asyncio.run(_stub(int(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
