"""The UDP discovery responder behind ``manage.py run_discovery``.

A machine broadcasts ``ESP32_DISCOVERY_REQUEST`` (or ``DISCOVER_FLASK_SERVER``) to port
12346 and takes the first ``FLASK_SERVER:<ip>`` (``FLASK_SERVER_IP:<ip>``) it hears. The
address we answer with is ours on the interface that faces the sender, found by asking the
kernel's routing table (a ``connect`` on a UDP socket sends nothing), so it works on an
offline LAN and never looks anything up outside.

The listener must not be usable to amplify traffic: it answers only the two exact requests,
its answers are at most 31 bytes, and each source address gets at most ``rate`` answers per
second (the rest are dropped silently).

What was answered is recorded after the answer, never before it: the protocol hands each
exchange to a :class:`Recorder`, whose one thread writes them in batches. Written one by
one (two INSERTs and a live-page push, which costs a thread, an event loop and a Redis
connection), an exchange took about 15 ms, so at 200 requests a second the writer fell
further behind every second, and its work competed with the answering loop for the GIL.
"""

import asyncio
import ipaddress
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from vending_site.observability import logging as vlog

from .access import device_network_allowed
from .protocol import discovery_reply

logger = logging.getLogger(__name__)


def local_address_towards(peer_ip: str) -> str:
    """Our IPv4 address on the interface the kernel would use to reach ``peer_ip``."""
    if ipaddress.ip_address(peer_ip).is_loopback:
        return "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((peer_ip, 9))  # a UDP connect only selects a route; no packet leaves
        return probe.getsockname()[0]
    finally:
        probe.close()


@dataclass
class RateLimiter:
    """At most ``rate`` events per second per key (a token bucket with burst ``burst``)."""

    rate: float = 5.0
    burst: int = 5
    max_keys: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # a flood of spoofed sources must not grow memory forever
        self._buckets[key] = (tokens, now)
        return allowed


T = TypeVar("T")
_STOP = object()


class Recorder(Generic[T]):
    """Hands items to ``write(batch)`` on a thread of its own, so whoever submits never waits.

    ``submit`` only appends to a bounded queue (``capacity``); the thread takes what has
    queued, waiting up to ``linger`` seconds for more (at most ``batch`` items), and writes
    that batch in one call. If the writer falls so far behind that the queue is full, new items
    are counted (``refused``) and a warning says so, rather than letting memory grow
    without bound or making the submitter wait. ``close`` writes everything still queued.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        capacity: int = 10_000,
        batch: int = 200,
        linger: float = 0.2,
        name: str = "recorder",
    ) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._batch = batch
        self._linger = linger
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # Each counter has one writer: the submitting thread, or the recorder's own.
        self.recorded = 0  # items written
        self.refused = 0  # items a full queue could not take
        self.failed = 0  # items in a batch whose write raised

    @property
    def unrecorded(self) -> int:
        return self.refused + self.failed

    def start(self) -> "Recorder[T]":
        self._thread.start()
        return self

    def submit(self, item: T) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.refused += 1
            if self.refused % 1000 == 1:  # the first, then one line a thousand
                logger.warning("recorder queue full: %d items not recorded", self.refused)

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued and stop the thread; False if it did not finish in time."""
        if not self._thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self._linger
            while len(batch) < self._batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._write(batch)
                self.recorded += len(batch)
            except Exception:  # recording is best effort; the next batch may well succeed
                self.failed += len(batch)
                logger.exception("could not record %d items", len(batch))


class DiscoveryProtocol(asyncio.DatagramProtocol):
    """Answers discovery requests; calls ``on_discovery(peer_ip, request, reply)`` for each."""

    def __init__(
        self,
        *,
        advertise_ip: str = "",
        limiter: RateLimiter | None = None,
        on_discovery: Callable[[str, bytes, bytes], None] | None = None,
    ) -> None:
        self.advertise_ip = advertise_ip
        self.limiter = limiter or RateLimiter()
        self.on_discovery = on_discovery
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        peer_ip = addr[0]
        # A discovery datagram names no device; its address is what identifies the sender.
        # Rebound first thing for every datagram, so each line below names its own sender.
        vlog.bind(peer_ip=peer_ip)
        if not device_network_allowed(peer_ip):  # DEVICE_ALLOWED_NETWORKS: strangers get silence
            self.dropped += 1
            logger.debug("not an allowed network: dropped discovery from %s", peer_ip)
            return
        server_ip = self.advertise_ip or local_address_towards(peer_ip)
        reply = discovery_reply(data, server_ip)
        if reply is None:
            logger.debug("ignored %d-byte datagram from %s:%s", len(data), *addr[:2])
            return
        if not self.limiter.allow(peer_ip):
            self.dropped += 1
            logger.debug("rate limit: dropped discovery from %s", peer_ip)
            return
        assert self.transport is not None
        self.transport.sendto(reply, addr)
        self.answered += 1
        if self.on_discovery is not None:
            try:
                self.on_discovery(peer_ip, data, reply)
            except Exception:  # recording is best effort; answering is what matters
                logger.exception("could not record discovery from %s", peer_ip)


async def serve(
    *,
    host: str,
    port: int,
    advertise_ip: str = "",
    on_discovery: Callable[[str, bytes, bytes], None] | None = None,
    stop: asyncio.Event,
    ready: Callable[[tuple], None] | None = None,
) -> DiscoveryProtocol:
    """Listen until ``stop`` is set; returns the protocol (with its counters)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: DiscoveryProtocol(advertise_ip=advertise_ip, on_discovery=on_discovery),
        local_addr=(host, port),
        family=socket.AF_INET,
    )
    try:
        if ready is not None:
            ready(transport.get_extra_info("sockname"))
        await stop.wait()
    finally:
        transport.close()
    return protocol
