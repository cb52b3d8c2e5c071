"""UDP discovery: ``DISCOVER_FLASK_SERVER`` to a real ``manage.py run_discovery`` -> reply.

The responder listens on a free port of 127.0.0.1 (never the real 12346, never a
broadcast); requests arrive open-loop at a fixed rate. The responder allows each sender
address 5 requests a second (a flood guard), as a fleet of machines each asks rarely, so
the requests come from many loopback source addresses (127.0.0.10 ... 127.0.0.109), each
well under that limit; every datagram is still sent to 127.0.0.1.
"""

import socket
import time

from bench.common import ScratchStack, free_port, make_row, open_loop, services_available

NAME = "discovery"
REQUEST = b"DISCOVER_FLASK_SERVER"
PREFIX = b"FLASK_SERVER_IP:"
SOURCES = 100  # source addresses; at 200/s each sends 2 a second
REPLY_TIMEOUT = 1.0


def source_address(index: int) -> str:
    return f"127.0.0.{10 + index % SOURCES}"


def run(quick: bool) -> dict:
    rate, seconds = (200, 2) if quick else (200, 6)
    postgres = not services_available()
    with ScratchStack(postgres=postgres) as stack:
        port = free_port(socket.SOCK_DGRAM)
        stack.start("discovery", "run_discovery", "--host", "127.0.0.1", "--port", str(port))
        stack.wait_output("discovery", "discovery listening", timeout=60)

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

        ask(0)  # the first answer warms the responder's path (not counted)
        time.sleep(0.5)
        load = open_loop(
            ask, rate=rate, count=rate * seconds, concurrency=32, max_seconds=seconds + 5
        )
    lost = sum(1 for outcome in load.outcomes if outcome.detail == "no reply")
    return {
        "scenario": NAME,
        "rows": [
            make_row(
                "DISCOVER_FLASK_SERVER -> reply",
                load.latencies(),
                errors=load.errors,
                target="p99 < 5 ms",
                limit_ms=5.0,
                stat="p99",
                rate_per_s=rate,
                lost=lost,
                generator_lag_ms=round(load.max_start_lag * 1000, 2),
            )
        ],
        "notes": [
            f"{rate}/s for {seconds} s open-loop from {SOURCES} loopback source addresses, "
            f"{stack.database_label}; {lost} requests got no reply within "
            f"{REPLY_TIMEOUT:g} s (counted as errors)",
        ],
    }
