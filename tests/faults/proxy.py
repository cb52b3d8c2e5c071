"""A loopback TCP proxy that injects network faults between the server and PostgreSQL/Redis.

One thread, one ``selectors`` loop, every socket non-blocking: nothing to leak but that
thread, which :meth:`FaultProxy.stop` joins. Modes, switched at any time:

- ``pass``: forward bytes both ways.
- ``latency``: hold every chunk ``latency_ms`` before forwarding it (both directions,
  order kept).
- ``hang``: accept connections but forward nothing, on open and new connections alike
  (the peers' kernels still acknowledge: only an application timeout notices).
- ``reset``: send RST on every open connection, and accept-then-RST every new one, as a
  database that restarts does (its clients see "connection reset"/"server closed").

Back to ``pass`` and new connections work again; a connection that saw ``hang`` resumes
forwarding what was held (a real network that comes back does the same).

Bounded: at most ``max_connections`` pairs (more are reset), at most ``max_buffer`` bytes
held per direction (the proxy stops reading when full), and the loop ends by itself after
``lifetime`` seconds if nobody stops it. Listens and connects on 127.0.0.1 only.
"""

import collections
import selectors
import socket
import struct
import threading
import time

LOOPBACK = "127.0.0.1"
MODES = ("pass", "latency", "hang", "reset")


class _Pair:
    """A client connection and its upstream connection, with the bytes held for each side."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        # (due time, bytes) waiting to be written to the named side
        self.pending = {client: collections.deque(), upstream: collections.deque()}

    def other(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def held(self, sock: socket.socket) -> int:
        return sum(len(data) for _, data in self.pending[sock])


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = LOOPBACK,
        max_connections: int = 256,
        max_buffer: int = 1 << 20,
        lifetime: float = 600.0,
    ) -> None:
        if upstream_host != LOOPBACK:
            raise ValueError("the fault proxy forwards to 127.0.0.1 only")
        self.upstream = (LOOPBACK, upstream_port)
        self.max_connections = max_connections
        self.max_buffer = max_buffer
        self.lifetime = lifetime
        self.mode = "pass"
        self.latency_ms = 0
        self.accepted = 0
        self.resets = 0
        self._pairs: dict[socket.socket, _Pair] = {}
        self._reading: set[socket.socket] = set()  # registered with the selector
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}")

    # --- control, from any thread ------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def set_mode(self, mode: str, latency_ms: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            self.mode = mode
            self.latency_ms = latency_ms if mode == "latency" else 0
        self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the fault proxy thread did not stop")
        self._close_all()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        return len({id(pair) for pair in self._pairs.values()})

    # --- the loop -----------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._waker_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._waker_r, selectors.EVENT_READ)
        ends = time.monotonic() + self.lifetime
        try:
            while not self._stop.is_set() and time.monotonic() < ends:
                with self._lock:
                    mode = self.mode
                if mode == "reset":
                    self._reset_all(selector)
                self._update_interest(selector, mode)
                ready = selector.select(timeout=self._next_timeout(mode))
                with self._lock:
                    mode = self.mode  # a switch may have woken us: act on it, not the old one
                if mode == "reset":
                    self._reset_all(selector)
                for key, _events in ready:
                    sock = key.fileobj
                    if sock is self._waker_r:
                        self._drain_waker()
                    elif sock is self._listener:
                        self._accept(selector, mode)
                    elif sock in self._pairs:
                        self._read(selector, sock, mode)
                self._flush(selector, mode)
        finally:
            selector.close()

    def _drain_waker(self) -> None:
        try:
            while self._waker_r.recv(1024):
                pass
        except BlockingIOError:
            pass

    def _next_timeout(self, mode: str) -> float:
        if mode == "hang":
            return 0.5
        soonest = None
        for pair in set(self._pairs.values()):
            for queue in pair.pending.values():
                if queue:
                    due = queue[0][0]
                    soonest = due if soonest is None else min(soonest, due)
        if soonest is None:
            return 0.5
        return min(max(soonest - time.monotonic(), 0.0), 0.5)

    def _accept(self, selector, mode: str) -> None:
        for _ in range(32):  # bounded per turn of the loop
            try:
                client, _addr = self._listener.accept()
            except BlockingIOError:
                return
            self.accepted += 1
            with self._lock:  # read after accept: a client that connected after switching
                mode = self.mode  # the mode must meet the new mode
            if mode == "reset" or self.open_connections >= self.max_connections:
                _rst(client)
                self.resets += 1
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                _rst(client)
                continue
            client.setblocking(False)
            upstream.setblocking(False)
            pair = _Pair(client, upstream)
            self._pairs[client] = pair
            self._pairs[upstream] = pair

    def _update_interest(self, selector, mode: str) -> None:
        """Read only where forwarding may go on and the other side's buffer has room."""
        for sock, pair in list(self._pairs.items()):
            wanted = mode != "hang" and pair.held(pair.other(sock)) < self.max_buffer
            if wanted and sock not in self._reading:
                selector.register(sock, selectors.EVENT_READ)
                self._reading.add(sock)
            elif not wanted and sock in self._reading:
                selector.unregister(sock)
                self._reading.discard(sock)

    def _read(self, selector, sock: socket.socket, mode: str) -> None:
        pair = self._pairs.get(sock)
        if pair is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._close_pair(selector, pair, rst=True)
            return
        if not data:
            self._close_pair(selector, pair, rst=False)
            return
        delay = self.latency_ms / 1000 if mode == "latency" else 0.0
        pair.pending[pair.other(sock)].append((time.monotonic() + delay, data))

    def _flush(self, selector, mode: str) -> None:
        if mode == "hang":
            return
        now = time.monotonic()
        for pair in set(self._pairs.values()):
            for target, queue in pair.pending.items():
                while queue and queue[0][0] <= now:
                    due, data = queue[0]
                    try:
                        sent = target.send(data)
                    except BlockingIOError:
                        break
                    except OSError:
                        self._close_pair(selector, pair, rst=True)
                        break
                    if sent < len(data):
                        queue[0] = (due, data[sent:])
                        break
                    queue.popleft()
                if pair.client not in self._pairs:
                    break

    def _reset_all(self, selector) -> None:
        for pair in set(self._pairs.values()):
            self._close_pair(selector, pair, rst=True)
            self.resets += 1

    def _close_pair(self, selector, pair: _Pair, *, rst: bool) -> None:
        for sock in (pair.client, pair.upstream):
            self._pairs.pop(sock, None)
            if sock in self._reading:
                selector.unregister(sock)
                self._reading.discard(sock)
            if rst:
                _rst(sock)
            else:
                sock.close()

    def _close_all(self) -> None:
        for pair in set(self._pairs.values()):
            for sock in (pair.client, pair.upstream):
                _rst(sock)
        self._pairs.clear()
        for sock in (self._listener, self._waker_r, self._waker_w):
            sock.close()


def _rst(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN (SO_LINGER on, zero timeout)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
