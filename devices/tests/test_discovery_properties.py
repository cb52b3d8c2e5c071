"""Properties of UDP discovery (hypothesis), on the pure handling: ``discovery_reply`` and the
responder's ``datagram_received`` with a transport that records what it would send. (A real
socket on 127.0.0.1 is exercised in ``test_discovery.py``.)

The responder answers exactly the two documented requests, with exactly the documented
datagram, to the sender only; everything else gets silence."""

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st

from devices.discovery import DiscoveryProtocol, RateLimiter
from devices.protocol import DISCOVERY_REQUESTS, MAX_DISCOVERY_DATAGRAM, discovery_reply

ANSWERS = {
    b"ESP32_DISCOVERY_REQUEST": b"FLASK_SERVER:",
    b"DISCOVER_FLASK_SERVER": b"FLASK_SERVER_IP:",
}
TOLERATED = st.text(alphabet=" \t\r\n\x00", max_size=6).map(str.encode)
IPV4 = st.ip_addresses(v=4).map(str)
PORTS = st.integers(min_value=1, max_value=65535)
# Near misses: a request with a byte changed, added or dropped, or in another case.
REQUESTS = st.sampled_from(sorted(ANSWERS))
NEAR_MISSES = st.one_of(
    REQUESTS.map(bytes.lower),
    st.tuples(REQUESTS, st.binary(min_size=1, max_size=3)).map(lambda t: t[0] + t[1]),
    st.tuples(st.binary(min_size=1, max_size=3), REQUESTS).map(lambda t: t[0] + t[1]),
    REQUESTS.map(lambda r: r[:-1]),
    st.tuples(REQUESTS, st.integers(0, 20), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
    ),
)
DATAGRAMS = st.one_of(st.binary(max_size=2 * MAX_DISCOVERY_DATAGRAM), NEAR_MISSES)


def is_request(datagram: bytes) -> bool:
    return (
        len(datagram) <= MAX_DISCOVERY_DATAGRAM
        and datagram.strip(b" \t\r\n\x00") in DISCOVERY_REQUESTS
    )


@given(REQUESTS, TOLERATED, TOLERATED, IPV4)
def test_each_request_gets_exactly_its_documented_answer(request, before, after, server_ip):
    reply = discovery_reply(before + request + after, server_ip)
    assert reply == ANSWERS[request] + server_ip.encode("ascii")
    prefix, _, address = reply.decode("ascii").partition(":")
    assert prefix in ("FLASK_SERVER", "FLASK_SERVER_IP")
    assert str(ipaddress.IPv4Address(address)) == server_ip  # what the firmware parses
    assert len(reply) <= 31  # no amplification: never more than a few bytes out


@given(DATAGRAMS, IPV4)
@example(b"ESP32_DISCOVERY_REQUEST\x00\x00", "10.0.0.1")
@example(b"ESP32_DISCOVERY_REQUEST" + b" " * 60, "10.0.0.1")  # padded past the size limit
@example(b"esp32_discovery_request", "10.0.0.1")
@example(b"FLASK_SERVER:10.0.0.1", "10.0.0.1")  # another server's answer is not a question
def test_anything_but_a_request_is_ignored(datagram, server_ip):
    reply = discovery_reply(datagram, server_ip)
    if is_request(datagram):
        assert reply == ANSWERS[datagram.strip(b" \t\r\n\x00")] + server_ip.encode()
    else:
        assert reply is None


class RecordingTransport:
    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


@given(st.lists(st.tuples(DATAGRAMS, IPV4, PORTS), max_size=30), IPV4)
def test_the_responder_answers_requests_to_their_sender_and_drops_the_rest(traffic, advertised):
    recorded = []
    protocol = DiscoveryProtocol(
        advertise_ip=advertised,
        limiter=RateLimiter(rate=1e9, burst=10**9),
        on_discovery=lambda *args: recorded.append(args),
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    expected = []
    for datagram, peer_ip, port in traffic:
        protocol.datagram_received(datagram, (peer_ip, port))
        if is_request(datagram):
            expected.append((discovery_reply(datagram, advertised), (peer_ip, port)))
    assert transport.sent == expected
    assert protocol.answered == len(expected)
    assert [(peer, reply) for peer, _request, reply in recorded] == [
        (addr[0], reply) for reply, addr in expected
    ]


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=5))
def test_a_flood_from_one_sender_gets_at_most_the_burst(count, burst):
    protocol = DiscoveryProtocol(
        advertise_ip="192.0.2.1", limiter=RateLimiter(rate=0.001, burst=burst)
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    for _ in range(count):
        protocol.datagram_received(b"ESP32_DISCOVERY_REQUEST", ("198.51.100.7", 12345))
    assert len(transport.sent) == min(count, burst)
    assert protocol.answered + protocol.dropped == count
