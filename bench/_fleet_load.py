"""Load-generator and stack helpers for ``bench/fleet_polling.py``.

- :class:`Pool`: raw HTTP/1.1 keep-alive connections over asyncio streams, round-robin over
  the server's ports, bounded in number; a request waits for a free connection, and that
  wait counts in its latency (the caller measures from the scheduled time).
- :class:`FleetStack`: a scratch PostgreSQL database (``fleet_*``), Redis db 15 and the web
  server under test (granian, Daphne, uvicorn or gunicorn), every child ended by :meth:`close`.
- ``python bench/_fleet_load.py seed '{...}'``: the child that registers and stocks the
  devices and creates the API keys, through the project's own services.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/15"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_admin(statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(connect_timeout=5, **PG_ADMIN)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


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
        from tests.integration.scratch_stack import web_argv

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


class FleetStack:
    """Scratch database + Redis db 15 + the server under test; :meth:`close` ends it all.

    ``db_prefix`` and ``redis_url`` let another harness (``bench/soak.py``) keep its
    scratch database and Redis database apart from the fleet benchmark's; ``redis_url``
    ``""`` runs without Redis."""

    def __init__(self, *, db_prefix: str = "fleet", redis_url: str = REDIS_URL) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{db_prefix}_bench_"))
        self.db_name = f"{db_prefix}_{os.getpid()}_{secrets.token_hex(3)}"
        self.database_url = f"postgres://postgres@127.0.0.1:5432/{self.db_name}"
        self.redis_url = redis_url
        self.env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="vending_site.settings",
            DATABASE_URL=self.database_url,
            REDIS_URL=redis_url,
            SECRET_KEY=secrets.token_urlsafe(40),
            DATA_DIR=str(self.workdir),
            PROMETHEUS_MULTIPROC_DIR=str(self.workdir / "metrics"),
            DEBUG="false",
            LOG_LEVEL="WARNING",
            WEB_ACCESS_LOG="false",
            SECURE_SSL_REDIRECT="false",
        )
        self.env.pop("SERVER_SOFTWARE", None)
        if not redis_url:
            self.env.pop("REDIS_URL")
        self.children: list[subprocess.Popen] = []
        self.created = False
        self.ports: list[int] = []

    def create(self, *, devices: int, keys: int, stock: int, timeout: float = 300) -> dict:
        """Create and migrate the database, flush its Redis db, seed devices and API keys."""
        self.flush_redis()
        _pg_admin(f'CREATE DATABASE "{self.db_name}"')
        self.created = True
        self._run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], timeout)
        seed = json.dumps({"devices": devices, "keys": keys, "stock": stock})
        out = self._run([sys.executable, str(Path(__file__)), "seed", seed], timeout)
        return json.loads(out.strip().splitlines()[-1])

    def flush_redis(self) -> None:
        if not self.redis_url:
            return
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=3)
        try:
            client.flushdb()
        finally:
            client.close()

    def start_command(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """``manage.py <args>`` beside the server (the sweeper, the discovery listener),
        logged to ``<name>.log`` and ended with the server by :meth:`stop_server`."""
        return self._spawn(
            [sys.executable, "manage.py", *args], name, name, dict(self.env, **(env or {}))
        )

    def _spawn(self, argv: list[str], log_name: str, label: str, env: dict) -> subprocess.Popen:
        """``argv`` in its own session, logged to ``<log_name>.log``, one of :attr:`children`."""
        log = open(self.workdir / f"{log_name}.log", "w")
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process.log = log
        process.label = label
        self.children.append(process)
        return process

    def _run(self, argv: list[str], timeout: float) -> str:
        result = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[1:3]} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result.stdout

    def start(
        self,
        server: str,
        *,
        gunicorn_worker: str = "gthread",
        conn_max_age: int = 0,
        timeout: float = 120,
    ) -> None:
        """Start the server under test and wait until every port answers ``/health``
        (``/status`` lists every machine: slow with thousands of them)."""
        env = dict(self.env, CONN_MAX_AGE=str(conn_max_age))
        count = 2 if server in ("daphne", "uvicorn", "stub") else 1
        self.ports = [free_port() for _ in range(count)]
        for index, argv in enumerate(server_commands(server, self.ports, gunicorn_worker)):
            self._spawn(argv, f"{server}-{index}", server, env)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                if any(child.poll() is not None for child in self.children):
                    raise RuntimeError(f"{server} exited early:\n{self.logs()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server} did not answer on {port}:\n{self.logs()[-3000:]}")
                time.sleep(0.3)

    def logs(self, server: str = "") -> str:
        paths = sorted(self.workdir.glob(f"{server}-[0-9]*.log" if server else "*.log"))
        return "".join(path.read_text(errors="replace") for path in paths)

    def processes(self):
        """psutil handles of every server process (masters and workers)."""
        import psutil

        found = []
        for child in self.children:
            try:
                root = psutil.Process(child.pid)
                found.append(root)
                found.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return found

    def stop_server(self, timeout: float = 10) -> None:
        for child in self.children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for child in self.children:
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait(timeout=timeout)
            child.log.close()
        self.children = []

    def close(self) -> None:
        try:
            self.stop_server()
        finally:
            if self.created:
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                self.created = False


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


# --- the child: seeding through the project's services -------------------------------------


def device_id(index: int) -> str:
    return f"ESP32_{mac(index).replace(':', '')}"


def mac(index: int) -> str:
    """Locally administered MACs 02:F1:EE:xx:xx:xx, one per simulated device."""
    return "02:F1:EE:" + ":".join(f"{(index >> s) & 0xFF:02X}" for s in (16, 8, 0))


def machine_address(index: int) -> str:
    """The LAN address a simulated machine speaks from: its requests carry it in
    ``X-Forwarded-For`` (as nginx adds it; loopback is a trusted proxy), and it is the
    address the machine is bound to (devices/access.py)."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def _seed(devices: int, keys: int, stock: int) -> dict:
    """The first machine through the services (register, stock through the ledger); the
    others copied from it in bulk, ledger rows included, so every quantity is explained.
    (The services publish a live event per call: about 0.2 s per machine, too slow for
    2000 of them.)"""
    from django.db import transaction
    from rest_framework_api_key.models import APIKey

    from devices.choices import Protocol, Transport
    from devices.models import Device
    from devices.services import register_device
    from inventory.choices import MovementReason
    from inventory.models import Product, Slot, StockMovement
    from inventory.services import set_stock

    products = [
        Product.objects.get_or_create(
            sku=f"FLEET-{n}", defaults={"name": f"Fleet item {n}", "price": 1}
        )[0]
        for n in range(1, 6)
    ]
    first, _ = register_device(
        raw_id=device_id(0),
        transport=Transport.WIFI,
        protocol=Protocol.WIFI_V2,
        slot_count=5,
        admitted=True,  # the operator's own machines
        address=machine_address(0),
    )
    for slot in Slot.objects.filter(device=first).order_by("number"):
        Slot.objects.filter(pk=slot.pk).update(
            product=products[slot.number - 1], capacity=max(stock, 10)
        )
        slot.refresh_from_db()
        set_stock(slot=slot, quantity=stock, reason=MovementReason.RESTOCK)
    first.refresh_from_db()
    template = {
        field.attname: getattr(first, field.attname)
        for field in Device._meta.concrete_fields
        if field.name not in ("id", "device_id", "mac_address", "is_active")
    }
    slots = list(Slot.objects.filter(device=first).order_by("number"))
    movement = StockMovement.objects.filter(slot=slots[0]).first()
    with transaction.atomic():
        made = Device.objects.bulk_create(
            [
                Device(
                    **{
                        **template,
                        "bound_address": machine_address(index),
                        "last_address": machine_address(index),
                    },
                    device_id=device_id(index),
                    mac_address=mac(index),
                    is_active=False,
                )
                for index in range(1, devices)
            ],
            batch_size=500,
        )
        new_slots = Slot.objects.bulk_create(
            [
                Slot(
                    device=device,
                    number=slot.number,
                    product_id=slot.product_id,
                    quantity=slot.quantity,
                    capacity=slot.capacity,
                    low_stock_threshold=slot.low_stock_threshold,
                )
                for device in made
                for slot in slots
            ],
            batch_size=1000,
        )
        StockMovement.objects.bulk_create(
            [
                StockMovement(
                    slot=slot,
                    delta=slot.quantity,
                    quantity_after=slot.quantity,
                    reason=movement.reason,
                    note="fleet benchmark seed",
                )
                for slot in new_slots
            ],
            batch_size=1000,
        )
    api_keys = [APIKey.objects.create_key(name=f"fleet-bench-{n}")[1] for n in range(keys)]
    return {"keys": api_keys, "devices": devices}


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
    if argv[0] == "stub":
        asyncio.run(_stub(int(argv[1])))
        return
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    if argv[0] != "seed":
        raise SystemExit(f"unknown command {argv[0]!r}")
    sys.stdout.write("\n" + json.dumps(_seed(**json.loads(argv[1]))) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
