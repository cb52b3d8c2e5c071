"""Vend API under load: ``POST /api/v1/vend/{slot}`` from 50 concurrent kiosk clients.

The production web tier (granian as shipped, deploy/web.py: 2 workers x 8 threads, access log
off) on PostgreSQL + Redis, with the sweeper, the discovery listener (on a free loopback port)
and the serial bridge (no ports) running beside them; the requests arrive open-loop at a fixed
rate (at most 50 in flight, one keep-alive connection per client), each with its own
Idempotency-Key, over 10 machines x 5 slots stocked so none runs out (an out-of-stock 409 would
be counted apart). The machines do not poll: the commands stay queued (the queue TTL is an
hour), so only the request path is measured. BENCH_VEND_RATE changes the rate (default 50 a
second).
"""

import os
import secrets
import socket

from bench.common import (
    bench_stack,
    get_token,
    make_row,
    open_loop,
    thread_client,
)
from tests.scratch.net import free_port

NAME = "vend_api"
DEVICES = [f"ESP32_BE0C4000{n:04X}" for n in range(1, 11)]
SLOTS = 5
CLIENTS = 50


def run(quick: bool) -> dict:
    seconds = 3 if quick else 20
    rate = int(os.environ.get("BENCH_VEND_RATE", "50"))  # 50 clients, one vend a second each
    count = rate * seconds
    stock = count // (len(DEVICES) * SLOTS) + 20  # every slot keeps units to the end
    udp = free_port(socket.SOCK_DGRAM)
    with bench_stack() as stack:
        urls = [stack.start_web()]
        # The rest of the production topology, idling beside the workers as it would.
        stack.start("sweeper", "sweep_commands", "--every", "5")
        stack.start("discovery", "run_discovery", "--host", "127.0.0.1", "--port", str(udp))
        stack.start("bridge", "run_serial_bridge")
        stack.seed(devices=DEVICES, stock=[stock] * SLOTS)
        token = get_token(urls[0], stack.username)
        client = thread_client(urls, {"Authorization": f"Bearer {token}"})
        run_id = secrets.token_hex(4)

        def vend(index: int) -> tuple[bool, object]:
            device = DEVICES[index % len(DEVICES)]
            slot = index // len(DEVICES) % SLOTS + 1
            status, body = client().request(
                "POST",
                f"/api/v1/vend/{slot}",
                {"device_id": device},
                {"Idempotency-Key": f"bench-{run_id}-{index}"},
            )
            if status in (201, 202):
                return True, status
            if status == 409 and b"out_of_stock" in body:
                return False, "out_of_stock"
            return False, f"HTTP {status} {body[:120]!r}"

        # Warm each worker's connections and code paths (not counted).
        warm = open_loop(vend, rate=20, count=16, concurrency=16)
        load = open_loop(
            lambda i: vend(i + warm_count(warm)),
            rate=rate,
            count=count,
            concurrency=CLIENTS,
            max_seconds=seconds + 15,  # a server that falls far behind: the rest is not sent
        )
        queued = stack.sql("SELECT count(*) FROM transactions_transaction WHERE state = 'queued'")
    out_of_stock = sum(1 for o in load.outcomes if o.detail == "out_of_stock")
    failures = sorted({str(o.detail) for o in load.outcomes if not o.ok})[:3]
    accepted = load.latencies()
    return {
        "scenario": NAME,
        "rows": [
            make_row(
                "POST /api/v1/vend -> 202 accepted",
                accepted,
                errors=load.errors - out_of_stock,
                target="p99 < 50 ms",
                limit_ms=50.0,
                stat="p99",
                rate_per_s=rate,
                clients=CLIENTS,
                server="granian as shipped (deploy/web.py), 2 workers x 8 threads",
                out_of_stock=out_of_stock,
                achieved_per_s=round(len(load.outcomes) / max(load.elapsed, 1e-9), 1),
                generator_lag_ms=round(load.max_start_lag * 1000, 2),
            )
        ],
        "notes": [
            f"{count} vends at {rate}/s open-loop, at most {CLIENTS} in flight, granian as "
            f"shipped (deploy/web.py, 2 workers x 8 threads), {stack.database_label}; "
            f"{len(accepted)} accepted, {out_of_stock} out of stock, {queued[0][0]} queued in "
            "the database at the end",
            *(f"failure sample: {failure}" for failure in failures),
        ],
    }


def warm_count(warm) -> int:
    return len(warm.outcomes) + warm.not_sent
