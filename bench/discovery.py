"""UDP discovery: ``DISCOVER_FLASK_SERVER`` to a real ``manage.py run_discovery`` -> reply.

The responder listens on a free port of 127.0.0.1 (never the real 12346, never a
broadcast); requests arrive open-loop at a fixed rate. The responder allows each sender
address 5 requests a second (a flood guard), as a fleet of machines each asks rarely, so
the requests come from many loopback source addresses (127.0.0.10 ... 127.0.0.109), each
well under that limit; every datagram is still sent to 127.0.0.1.

The generator is one thread over one non-blocking socket per source address (``epoll``):
it sends each request when it is due and timestamps each reply as it is read, so its own
floor is well under a millisecond. (A pool of threads doing blocking sockets, the
generic ``open_loop``, put tens of milliseconds of its own GIL and scheduling waits into
the tail.) The same run against a stub responder (plain asyncio, no Django) gives that
floor as a second row, so a slow figure can be told apart from a slow generator:

    .venv/bin/python -m bench.discovery --server stub,real --seconds 6 --repeat 3
"""

import argparse
import asyncio
import collections
import gc
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bench.common import (
    ROOT,
    bench_stack,
    make_row,
    open_loop,
    services_available,
)
from tests.scratch.net import free_port
from tests.scratch.stack import Stack

NAME = "discovery"
REQUEST = b"DISCOVER_FLASK_SERVER"
PREFIX = b"FLASK_SERVER_IP:"
SOURCES = 100  # source addresses; at 200/s each sends 2 a second
REPLY_TIMEOUT = 1.0
SERVERS = ("real", "stub")


def source_address(index: int) -> str:
    return f"127.0.0.{10 + index % SOURCES}"


@dataclass
class UdpLoad:
    latencies: list[float] = field(default_factory=list)  # seconds, from each due time
    lost: int = 0  # no reply within REPLY_TIMEOUT
    wrong: int = 0  # a reply that is not FLASK_SERVER_IP:...
    not_sent: int = 0
    max_send_lag: float = 0.0  # how late the generator itself sent a request

    @property
    def errors(self) -> int:
        return self.lost + self.wrong + self.not_sent


# Linux: the kernel stamps each datagram as it arrives (CLOCK_REALTIME), so a reply's
# time does not depend on when the generator gets round to reading it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")


def _received_at(ancillary: list) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(data)
            return seconds + nanoseconds / 1e9
    return None


def udp_open_loop(port: int, *, rate: float, count: int, max_seconds: float) -> UdpLoad:
    """Send ``count`` requests to 127.0.0.1:``port`` at ``rate``/s, request ``i`` from source
    ``i % SOURCES`` due at ``t0 + i / rate``; its latency runs from that due time to the
    kernel's arrival stamp on its reply (no coordinated omission: a late send counts).
    Replies on one socket are matched to its requests in order (loopback keeps a socket's
    datagrams in order)."""
    load = UdpLoad()
    selector = selectors.DefaultSelector()
    sockets = []
    pending: dict[int, collections.deque] = {}
    gc_was_enabled = gc.isenabled()
    try:
        for n in range(min(SOURCES, count)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind((source_address(n), 0))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, n)
            pending[n] = collections.deque()
        target = ("127.0.0.1", port)
        gc.disable()  # a collection here would be the generator's pause, not the server's
        t0 = time.time() + 0.05  # the wall clock, as the kernel's stamps are
        stop_at = t0 + max_seconds
        sent = 0
        outstanding = 0
        while time.time() < stop_at and (sent < count or outstanding):
            now = time.time()
            while sent < count and t0 + sent / rate <= now:
                due = t0 + sent / rate
                source = sent % len(sockets)
                sockets[source].sendto(REQUEST, target)
                load.max_send_lag = max(load.max_send_lag, time.time() - due)
                pending[source].append(due)
                outstanding += 1
                sent += 1
            # Wake for the next send (epoll counts whole milliseconds, so sleep the last one),
            # or a reply, or the oldest request's timeout.
            wake = min(t0 + sent / rate if sent < count else now + REPLY_TIMEOUT, stop_at)
            for key, _ in selector.select(max(0.0, wake - time.time() - 0.001)):
                _read_replies(key.fileobj, pending[key.data], load)
            outstanding = sum(len(queue) for queue in pending.values())
            remaining = wake - time.time()
            if sent < count and 0 < remaining <= 0.001:
                time.sleep(remaining)
            expired = time.time() - REPLY_TIMEOUT
            for queue in pending.values():
                while queue and queue[0] < expired:
                    queue.popleft()
                    load.lost += 1
        load.lost += sum(len(queue) for queue in pending.values())
        load.not_sent = count - sent
    finally:
        if gc_was_enabled:
            gc.enable()
        selector.close()
        for sock in sockets:
            sock.close()
    return load


def _read_replies(sock: socket.socket, pending: collections.deque, load: UdpLoad) -> None:
    for _ in range(64):  # bounded: a socket holds a handful of replies at most
        try:
            data, ancillary, _, _ = sock.recvmsg(128, 64)
        except BlockingIOError:
            return
        received = _received_at(ancillary) or time.time()
        if not pending:
            continue  # a reply after its request was given up as lost
        due = pending.popleft()
        if data.startswith(PREFIX):
            load.latencies.append(received - due)
        else:
            load.wrong += 1


def threaded_open_loop(port: int, *, rate: float, count: int, max_seconds: float) -> UdpLoad:
    """The former generator, kept to show its own cost: ``open_loop``'s 32 threads, each
    request a new blocking socket."""

    def ask(index: int) -> tuple[bool, object]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source_address(index), 0))
            sock.settimeout(REPLY_TIMEOUT)
            sock.sendto(REQUEST, ("127.0.0.1", port))
            try:
                data, _ = sock.recvfrom(128)
            except TimeoutError:
                return False, "no reply"
        return data.startswith(PREFIX), data[:40]

    result = open_loop(ask, rate=rate, count=count, concurrency=32, max_seconds=max_seconds)
    lost = sum(1 for outcome in result.outcomes if outcome.detail == "no reply")
    return UdpLoad(
        latencies=result.latencies(),
        lost=lost,
        wrong=result.errors - result.not_sent - lost,
        not_sent=result.not_sent,
        max_send_lag=result.max_start_lag,
    )


GENERATORS = {"epoll": udp_open_loop, "threads": threaded_open_loop}
GENERATOR_LABELS = {"epoll": "one thread (epoll)", "threads": "32 threads, blocking sockets"}


# --- the stub responder: the same answer, no Django, no database ----------------------------


class _StubProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if data.strip(b" \r\n\t\x00") == REQUEST:
            self.transport.sendto(PREFIX + b"127.0.0.1", addr)


async def _serve_stub(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    transport, _ = await loop.create_datagram_endpoint(
        _StubProtocol, local_addr=("127.0.0.1", port), family=socket.AF_INET
    )
    print("stub listening", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), 600)
    except TimeoutError:
        pass
    finally:
        transport.close()


def _start_stub(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.discovery", "--serve-stub", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline()  # bounded: the stub prints at once or dies
    if "stub listening" not in line:
        process.kill()
        raise RuntimeError(f"the stub responder did not start: {line!r}")
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- the scenario ----------------------------------------------------------------------------


def measure(
    server: str,
    *,
    rate: float,
    seconds: float,
    stack: Stack | None,
    generator: str = "epoll",
) -> UdpLoad:
    """One open-loop run against a fresh ``server`` ("real": run_discovery in ``stack``)."""
    port = free_port(socket.SOCK_DGRAM)
    if server == "stub":
        process = _start_stub(port)
    else:
        name = f"discovery-{port}"
        process = stack.start(name, "run_discovery", "--host", "127.0.0.1", "--port", str(port))
        stack.wait_output(name, "discovery listening", timeout=60)
    try:
        # The first answer warms the responder's path (not counted).
        udp_open_loop(port, rate=10, count=1, max_seconds=REPLY_TIMEOUT + 1)
        time.sleep(0.5)
        generate = GENERATORS[generator]
        return generate(port, rate=rate, count=int(rate * seconds), max_seconds=seconds + 5)
    finally:
        _stop(process)


def _row(server: str, load: UdpLoad, rate: float) -> dict:
    if server == "stub":
        metric, target, limit = "generator floor (stub responder, no Django)", "", None
    else:
        metric, target, limit = "DISCOVER_FLASK_SERVER -> reply", "p99 < 5 ms", 5.0
    return make_row(
        metric,
        load.latencies,
        errors=load.errors,
        target=target,
        limit_ms=limit,
        stat="p99",
        rate_per_s=rate,
        lost=load.lost,
        generator_lag_ms=round(load.max_send_lag * 1000, 2),
    )


def run(
    quick: bool,
    servers: tuple[str, ...] = ("real", "stub"),
    seconds: float = 0,
    generator: str = "epoll",
) -> dict:
    rate, seconds = 200, seconds or (2 if quick else 6)
    postgres = not services_available()
    rows, losses = [], {}
    with bench_stack(postgres=postgres) as stack:
        for server in servers:
            load = measure(server, rate=rate, seconds=seconds, stack=stack, generator=generator)
            rows.append(_row(server, load, rate))
            losses[server] = load.lost
        if "real" in servers:
            recorded = _recorded(stack)
    notes = [
        f"{rate}/s for {seconds:g} s open-loop from {SOURCES} loopback source addresses, "
        f"generator: {GENERATOR_LABELS[generator]}; {stack.database_label}; requests with no reply "
        f"within {REPLY_TIMEOUT:g} s count as errors: "
        + ", ".join(f"{server} {lost}" for server, lost in losses.items())
    ]
    if "real" in servers:
        notes.append(f"the responder recorded {recorded} exchanges in the communication log")
    return {"scenario": NAME, "rows": rows, "notes": notes}


def _recorded(stack: Stack) -> int | str:
    if not stack.database:
        return "(not counted on SQLite)"
    query = "SELECT count(*) FROM devices_communicationlog WHERE endpoint = 'udp discovery'"
    return stack.sql(query)[0][0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="real,stub", help=f"some of {', '.join(SERVERS)}")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--generator", choices=tuple(GENERATORS), default="epoll")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each server, alternated")
    parser.add_argument("--serve-stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub:
        asyncio.run(_serve_stub(args.serve_stub))
        return
    servers = tuple(s.strip() for s in args.server.split(",") if s.strip())
    if not servers or set(servers) - set(SERVERS):
        parser.error(f"--server: some of {', '.join(SERVERS)}")
    if not 1 <= args.seconds <= 120 or not 1 <= args.repeat <= 10:
        parser.error("--seconds 1..120, --repeat 1..10")
    for attempt in range(args.repeat):
        result = run(False, servers=servers, seconds=args.seconds, generator=args.generator)
        for row in result["rows"]:
            print(
                f"run {attempt + 1} {row['metric']}: n={row['count']} p50={row['p50']} "
                f"p95={row['p95']} p99={row['p99']} max={row['max']} errors={row['errors']} "
                f"lag={row['generator_lag_ms']} ms"
            )
        for note in result["notes"]:
            print(f"  note: {note}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
