"""The fault proxy itself, against a loopback echo server: each mode does what it says."""

import socket
import threading
import time

import pytest

from tests.faults.proxy import FaultProxy


@pytest.fixture
def echo_port():
    """A loopback echo server (one thread per connection, all ended with the fixture)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    threads = []

    def serve(conn):
        conn.settimeout(0.2)
        with conn:
            for _ in range(500):  # 100 s at most
                if stop.is_set():
                    return
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept():
        for _ in range(500):
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    stop.set()
    acceptor.join(2)
    for thread in threads:
        thread.join(2)
    listener.close()


@pytest.fixture
def proxy(echo_port):
    with FaultProxy(echo_port, lifetime=60) as proxy:
        yield proxy


def connect(proxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(2)
    return sock


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(payload)
    return sock.recv(100), time.monotonic() - started


def test_pass_forwards_both_ways(proxy):
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"  # within the socket's 2 s timeout


def test_latency_holds_every_chunk_each_way(proxy):
    proxy.set_mode("latency", latency_ms=150)
    with connect(proxy) as sock:
        data, took = round_trip(sock)
    assert data == b"ping"
    assert took >= 0.29  # 150 ms there, 150 ms back (a load cannot shorten it)


def test_hang_accepts_but_forwards_nothing_until_pass_again(proxy):
    with connect(proxy) as open_before:
        assert round_trip(open_before)[0] == b"ping"
        proxy.set_mode("hang")
        with connect(proxy) as new:  # the connection itself succeeds
            new.settimeout(0.5)
            open_before.settimeout(0.5)
            new.sendall(b"a")
            open_before.sendall(b"b")
            with pytest.raises(TimeoutError):
                new.recv(10)
            with pytest.raises(TimeoutError):
                open_before.recv(10)
            proxy.set_mode("pass")
            new.settimeout(2)
            open_before.settimeout(2)
            assert new.recv(10) == b"a"  # held, then delivered
            assert open_before.recv(10) == b"b"


def test_reset_sends_rst_to_open_and_new_connections_then_pass_recovers(proxy):
    with connect(proxy) as open_before:
        assert round_trip(open_before)[0] == b"ping"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            for _ in range(20):  # the RST arrives within a turn of the proxy's loop
                open_before.sendall(b"x")
                if not open_before.recv(10):
                    break
                time.sleep(0.05)
    with pytest.raises(ConnectionResetError):  # at connect or at the first exchange
        with connect(proxy) as new:
            new.sendall(b"x")
            new.recv(10)
    proxy.set_mode("pass")
    with connect(proxy) as again:
        assert round_trip(again)[0] == b"ping"
    assert proxy.resets >= 2


def test_stop_ends_the_thread_and_closes_every_socket(echo_port):
    proxy = FaultProxy(echo_port).start()
    sock = connect(proxy)
    assert round_trip(sock)[0] == b"ping"
    proxy.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    with pytest.raises((ConnectionResetError, OSError)):
        sock.sendall(b"x")
        if not sock.recv(10):
            raise ConnectionResetError("closed")
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_only_loopback_upstreams():
    with pytest.raises(ValueError):
        FaultProxy(5432, upstream_host="10.0.0.1")
