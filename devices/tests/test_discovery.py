"""UDP discovery: exact requests answered with our address, everything else ignored, floods cut."""

import asyncio
import re
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.discovery import RateLimiter, local_address_towards, serve
from devices.models import CommunicationLog
from devices.protocol import DISCOVERY_REQUESTS, discovery_reply
from tests.scratch.children import read_until, start_command, stop


def test_both_request_forms_get_their_own_answer():
    assert discovery_reply(b"ESP32_DISCOVERY_REQUEST", "10.1.2.3") == b"FLASK_SERVER:10.1.2.3"
    assert discovery_reply(b"DISCOVER_FLASK_SERVER", "10.1.2.3") == b"FLASK_SERVER_IP:10.1.2.3"


def test_surrounding_whitespace_and_a_c_string_nul_are_tolerated():
    assert discovery_reply(b"ESP32_DISCOVERY_REQUEST\r\n\x00", "127.0.0.1") is not None


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"esp32_discovery_request",
        b"ESP32_DISCOVERY_REQUEST_X",
        b"HELLO",
        b"\xff\xfe" * 10,
        b"ESP32_DISCOVERY_REQUEST" * 10,
    ],
)
def test_anything_else_is_ignored(datagram):
    assert discovery_reply(datagram, "127.0.0.1") is None


@given(st.binary(max_size=200))
def test_random_bytes_are_answered_only_when_they_are_a_request(datagram):
    reply = discovery_reply(datagram, "255.255.255.255")
    if datagram.strip(b" \t\r\n\x00") in DISCOVERY_REQUESTS:
        assert reply is not None and len(reply) <= 31
    else:
        assert reply is None


def test_the_address_for_a_loopback_sender_is_loopback():
    assert local_address_towards("127.0.0.1") == "127.0.0.1"
    assert local_address_towards("127.0.0.53") == "127.0.0.1"


def test_rate_limiter_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now=0.0)  # per source
    assert limiter.allow("a", now=0.5)  # one token back after 0.5 s at 2/s
    assert not limiter.allow("a", now=0.5)


class Listener:
    """The responder on an ephemeral loopback port, in a thread of its own."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.address = None
        self.protocol = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def ready(sockname):
            self.address = sockname
            self._ready.set()

        self.protocol = await serve(
            host="127.0.0.1", port=0, stop=self._stop, ready=ready, **self.kwargs
        )

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def ask(address, datagram: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, address)
        try:
            return sock.recvfrom(128)[0]
        except TimeoutError:
            return None


def test_a_real_udp_request_on_loopback_is_answered_with_the_loopback_address():
    with Listener() as listener:
        assert ask(listener.address, b"ESP32_DISCOVERY_REQUEST") == b"FLASK_SERVER:127.0.0.1"
        assert ask(listener.address, b"DISCOVER_FLASK_SERVER") == b"FLASK_SERVER_IP:127.0.0.1"
        assert ask(listener.address, b"garbage", timeout=0.2) is None


def test_an_advertised_address_overrides_the_interface_address():
    with Listener(advertise_ip="192.0.2.10") as listener:
        assert ask(listener.address, b"ESP32_DISCOVERY_REQUEST") == b"FLASK_SERVER:192.0.2.10"


def test_a_flood_from_one_source_is_cut_to_the_rate_limit():
    with Listener() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        for _ in range(100):
            sock.sendto(b"ESP32_DISCOVERY_REQUEST", listener.address)
        answers = 0
        while True:
            try:
                sock.recvfrom(128)
            except TimeoutError:
                break
            answers += 1
        assert 1 <= answers <= 10
    assert listener.protocol.answered == answers
    assert listener.protocol.dropped == 100 - answers


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_run_discovery_answers_logs_and_stops_cleanly_on_sigterm():
    process = start_command("run_discovery", "--host", "127.0.0.1", "--port", "0")
    try:
        line = read_until(process, "discovery listening on udp")
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        assert ask(("127.0.0.1", port), b"ESP32_DISCOVERY_REQUEST", timeout=2) == (
            b"FLASK_SERVER:127.0.0.1"
        )
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "answered 1" in output
    entry = CommunicationLog.objects.get(endpoint="udp discovery")
    assert entry.remote_addr == "127.0.0.1"
    assert "FLASK_SERVER:127.0.0.1" in entry.message


@pytest.mark.parametrize("bad", ["example.com", "fe80::1", "1.2.3.4.5", "1.2.3.4 "])
def test_an_advertised_address_must_be_ipv4(bad):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="must be an IPv4 address"):
        call_command("run_discovery", "--advertise-ip", bad, "--port", "0")
