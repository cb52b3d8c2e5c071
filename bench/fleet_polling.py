"""Scenario 1, fleet polling: N WiFi machines polling every 2 s while REST clients vend.

    .venv/bin/python bench/fleet_polling.py --devices 10000 --seconds 60 --ceiling
    .venv/bin/python bench/fleet_polling.py --devices 10000,20000 --seconds 15 --server stub
    .venv/bin/python bench/fleet_polling.py --devices 100,500,1000,2000 \
        --server granian,gunicorn,daphne

Each simulated machine (firmware v2.1) polls ``GET /esp32/commands/<id>`` on its own 2 s
clock, phases spread evenly; the load is open-loop: a poll's latency is measured from the
time it was *scheduled*, so waiting for a connection or a slow server shows up in it. A
machine that receives a VEND behaves as the firmware does: 1.9 s of motor, then
``POST /esp32/confirm`` with its MAC in colon form, then 2 s before its next scheduled poll.
Vend clients (``--keys`` API keys, each within its default vend throttle) send
``POST /api/v1/vend/<slot>`` at ``--vend-rate`` per second, also open-loop, to machines that
are polling. Every machine sends ``X-Forwarded-For`` with an address of its own, as nginx
would add it, so the per-address device throttle sees one address per machine (loopback is
a trusted proxy by default).

``--server``: ``granian`` (production, as ``deploy/web.py`` runs it: WSGI, 2 workers x 8
threads), ``daphne``, ``uvicorn``, ``gunicorn``, ``gunicorn-asgi`` (see
:func:`bench._fleet_load.describe`) or ``stub`` (no Django: the generator's own floor and
ceiling). ``--conn-max-age`` overrides CONN_MAX_AGE (default 0 for ASGI, 60 for WSGI).

The generator runs in ``--procs`` processes (default 2), each owning every ``procs``-th
machine (with its phase) and vend, on asyncio Protocols (no stream reader, no task per
request); the parent picks a common start, meters the CPU of the server's processes and of
the generator's over the measured window, and merges their figures. ``--ceiling`` first
offers the same load, then twice the machines (and vends), to ``stub``: the generator's own
ceiling, printed beside the real run. After a run with vends, the accounting check
(``tests/accounting.py``): every vend answered 202 dispensed exactly once by the machines'
own records (or refunded / flagged for staff), nothing doubled, stock and ledger agree.

The server runs against a scratch PostgreSQL database (``fleet_*``) and Redis db 15. Every
load loop is bounded in count and in time; every child is ended in ``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._fleet_generator import (
    LATE,
    LOOPS,
    MAX_CONNECTIONS,
    POLL_INTERVAL,
    VEND_CONNECTIONS,
    WARMUP,
    offer,
)
from bench._fleet_load import (
    SERVERS,
    account,
    fleet_stack,
    prepare,
    start_server,
    summary,
)
from tests.scratch import databases

NAME = "fleet_polling"
TARGET_DEVICES = 10_000
TARGET_P99_MS = 100.0  # polls and vends
# After the last vend is scheduled the machines poll on this long, so a vend accepted at the
# end is delivered (next poll), dispensed (1.9 s of motor) and confirmed before accounting.
TAIL = POLL_INTERVAL * 2 + 1.9 + 1  # 1.9 s: the motor
SETTLE_MAX = 15.0  # then at most this long for vends still queued or sent
# Machines coming online per second before the window (a fleet is switched on over time; a
# machine's first poll writes it online, the rest of its polls are the steady state).
RAMP_RATE = 500.0


# --- rows -------------------------------------------------------------------------------


def _rows(server: str, devices: int, seconds: float, vend_rate: float, stats: dict) -> list:
    server_cpu, generator_cpu = stats["cpu"]
    poll_errors = sum(stats["poll_errors"].values())
    vend_errors = sum(stats["vend_errors"].values())
    poll, vend = summary(stats["poll"]), summary(stats["vend"])
    # CPU per request answered in the window (polls, late ones included, vends, confirms):
    # a poll the generator gave up on before sending it cost the server nothing.
    late = stats["poll_errors"].get(LATE, 0)
    requests = poll["count"] + late + vend["count"] + len(stats["confirm"])
    per_request = 1e6 / max(requests, 1)
    common = {
        "server": server,
        "devices": devices,
        "seconds": seconds,
        "offered_polls_per_s": round(devices / POLL_INTERVAL, 1),
        "server_cpu_pct": server_cpu["cpu_pct"],
        "generator_cpu_pct": generator_cpu["cpu_pct"],
        "machine_busy_pct": server_cpu["machine_busy_pct"],
        "server_cpu_us_per_request": round(server_cpu["cpu_seconds"] * per_request, 1),
        "generator_cpu_us_per_request": round(generator_cpu["cpu_seconds"] * per_request, 1),
    }
    at_target = devices == TARGET_DEVICES and server != "stub"
    accounting = stats.get("accounting")
    accounted = bool(accounting and accounting["ok"])

    def row(kind: str, figures: dict, errors: int, target: str, met: bool, **extra) -> dict:
        return {
            "metric": f"{kind} {server} N={devices}",
            "unit": "ms",
            **figures,
            "errors": errors,
            "target": target,
            "met": met if at_target else None,
            **common,
            "error_kinds": stats[f"{kind}_errors"],
            **extra,
        }

    poll_met = poll["p99"] < TARGET_P99_MS and poll_errors == 0
    vend_met = vend["p99"] < TARGET_P99_MS and vend_errors == 0 and accounted
    return [
        row(
            "poll",
            poll,
            poll_errors,
            f"p99 < {TARGET_P99_MS:.0f} ms, 0 errors at {TARGET_DEVICES} devices"
            if server != "stub"
            else "the generator's ceiling",
            poll_met,
            polls_per_s=round(poll["count"] / seconds, 1),
            # The ramp and warm-up before the window: each machine's first polls.
            coming_online={**summary(stats["early"]), "errors": stats["early_errors"]},
            ramp_seconds=round(stats.get("ramp", 0.0), 1),
        ),
        row(
            "vend",
            vend,
            vend_errors,
            f"{vend_rate:g}/s: p99 < {TARGET_P99_MS:.0f} ms, 0 errors, accounting clean"
            if server != "stub"
            else "the generator's ceiling",
            vend_met,
            commands_received=stats["commands"],
            confirmed=stats["confirmed"],
            accounting=accounting,
        ),
        row(
            "confirm",
            summary(stats["confirm"]),
            sum(stats["confirm_errors"].values()),
            "reported (no target)",
            None,
        ),
    ]


def measure(
    *,
    servers: list[str],
    device_counts: list[int],
    seconds: float,
    ceiling: tuple[int, ...] = (),
    ceiling_seconds: float | None = None,
    vend_rate: float = 20.0,
    key_count: int = 20,
    procs: int = 2,
    ramp_rate: float = RAMP_RATE,
    loop: str = LOOPS[0],
    gunicorn_worker: str = "gthread",
    conn_max_age: int | None = None,
    log=print,
) -> dict:
    """``ceiling``: the stub at each of these N first (``ceiling_seconds`` each, vends
    scaled with N); then every (server, N) pair on one scratch stack; the scenario's
    result. A run with vends against a real server ends with the accounting."""
    rows, notes = [], []
    stack = fleet_stack()
    try:
        started = time.monotonic()
        plan = [("stub", list(ceiling), ceiling_seconds or seconds)] if ceiling else []
        plan += [(server, device_counts, seconds) for server in servers]
        real = [n for server, counts, _s in plan if server != "stub" for n in counts]
        if real:
            # Each (machine, slot) a run's vends pick gets at most this many vends.
            stock = max(20, int(seconds * vend_rate / (5 * min(real))) + 5)
            seeded = prepare(stack, devices=max(real), keys=key_count, stock=stock)
            log(f"seeded {seeded['devices']} machines in {time.monotonic() - started:.0f} s")
        else:  # no Django, no database
            seeded = {"keys": ["stub.key"]}
        for server, counts, length in plan:
            age = conn_max_age if conn_max_age is not None else (60 if server in WSGI else 0)
            ports = start_server(stack, server, gunicorn_worker=gunicorn_worker, conn_max_age=age)
            try:
                for devices in counts:
                    accounted = server != "stub" and vend_rate > 0
                    if accounted:
                        last = stack.sql("SELECT max(id) FROM inventory_stockmovement")[0][0]
                    ramp = devices / ramp_rate if ramp_rate and server != "stub" else 0.0
                    stats = offer(
                        ports,
                        devices=devices,
                        seconds=length,
                        vend_rate=vend_rate * (devices / counts[0] if server == "stub" else 1),
                        keys=seeded["keys"],
                        procs=procs,
                        server_processes=stack.processes(),
                        tail=TAIL if accounted else 0.0,
                        ramp=ramp,
                        loop=loop,
                    )
                    stats["ramp"] = ramp
                    if accounted:
                        settle = time.monotonic() + SETTLE_MAX
                        while (
                            databases.count_open_vends(stack.database_url)
                            and time.monotonic() < settle
                        ):
                            time.sleep(0.5)
                        stats["accounting"] = account(stack, last or 0, stats)
                        log(f"accounting {server} N={devices}: {stats['accounting']['line']}")
                    for row in _rows(server, devices, length, vend_rate, stats):
                        rows.append(row)
                        log(format_row(row))
            finally:
                stack.stop()
            label = server + (f" ({gunicorn_worker})" if server == "gunicorn" else "")
            notes.append(f"{label}: CONN_MAX_AGE={age}; {describe(server, gunicorn_worker)}")
            notes += server_trouble(label, stack.logs(f"{server}-[0-9]*"))
    finally:
        stack.close()
    notes.append(f"server logs kept in {stack.workdir}")
    notes += _ceiling(rows)
    notes.append(
        f"Open-loop from {procs} generator processes on {loop} (each every {procs}th machine, "
        "with its phase, and vend): latency from each request's scheduled time; devices share "
        f"at most {MAX_CONNECTIONS} keep-alive connections (vend clients {VEND_CONNECTIONS} more), "
        "spread round-robin over the server's ports (no nginx in front)."
    )
    notes.append(
        f"Measured after the ramp and a {WARMUP:.0f} s warm-up (every machine polled once); CPU "
        f"% is of one core ({os.cpu_count()} cores); machine_busy_pct is the whole machine, "
        "other users included; CPU per request: over the requests answered in the window "
        "(polls, late ones included, vends, confirms)."
    )
    return {"scenario": NAME, "rows": rows, "notes": notes}


def _ceiling(rows: list[dict]) -> list[str]:
    """The generator's ceiling beside each real run: the stub at the same and at more load."""
    stub = [r for r in rows if r["server"] == "stub" and r["metric"].startswith("poll ")]
    real = [r for r in rows if r["server"] != "stub" and r["metric"].startswith("poll ")]
    notes = [
        f"generator ceiling (stub) at {r['offered_polls_per_s']:.0f} polls/s offered: "
        f"{r['polls_per_s']:.0f} answered/s, p50 {r['p50']} p99 {r['p99']} max {r['max']} ms, "
        f"{r['errors']} errors; generator {r['generator_cpu_us_per_request']} us of CPU a "
        f"request ({r['generator_cpu_pct']} % of a core)"
        for r in stub
    ]
    for r in real:
        notes.append(
            f"{r['server']} at {r['offered_polls_per_s']:.0f} polls/s offered: "
            f"{r['polls_per_s']:.0f} answered/s, p99 {r['p99']} ms, {r['errors']} errors; "
            f"server {r['server_cpu_us_per_request']} us of CPU a request "
            f"({r['server_cpu_pct']} %), generator {r['generator_cpu_us_per_request']} us "
            f"({r['generator_cpu_pct']} %), machine {r['machine_busy_pct']} % busy; before "
            f"the window (machines coming online over {r['ramp_seconds']} s, then one poll "
            f"each): p99 {r['coming_online']['p99']} ms, {r['coming_online']['errors']} errors"
        )
    return notes


def server_trouble(label: str, logs: str) -> list[str]:
    """What the server's own log says went wrong (counted, not parsed in detail)."""
    signs = {
        "too many clients already": "PostgreSQL refused connections (max_connections)",
        "Internal Server Error": "answers 500",
        "took too long to shut down and was killed": "requests killed by the server's timeout",
        "WORKER TIMEOUT": "gunicorn killed a stuck worker",
        "Unexpected exit from worker": "a granian worker died",
    }
    found = [f"{what}: {logs.count(sign)}x" for sign, what in signs.items() if sign in logs]
    return [f"{label} log: " + "; ".join(found)] if found else []


def describe(server: str, gunicorn_worker: str) -> str:
    """One line on how ``server`` runs (workers, ports)."""
    return {
        "daphne": "2 Daphne processes (one port each), as Procfile.prod-local",
        "uvicorn": "2 uvicorn processes (one port each, h11, asyncio loop, lifespan off)",
        "gunicorn": f"gunicorn WSGI, {os.environ.get('WEB_WORKERS', '2')} {gunicorn_worker} "
        f"workers x {os.environ.get('WEB_THREADS', '8')} threads, one port",
        "gunicorn-asgi": "gunicorn 27 native ASGI worker (-k asgi), 2 workers, one port",
        "granian": f"granian WSGI as shipped (deploy/web.py), {os.environ.get('WEB_WORKERS', '2')} "
        f"workers x {os.environ.get('WEB_THREADS', '8')} threads, one port",
        "stub": "2 stub processes without Django (the generator's own floor and ceiling)",
    }[server]


WSGI = ("granian", "gunicorn")  # CONN_MAX_AGE 60 by default, as deploy/web.py runs it


def run(quick: bool) -> dict:
    """The scenario as the harness calls it: the generator's ceiling (the stub at the
    target's load and twice it, 15 s each), then granian as shipped at the target (10,000
    machines + 20 vends/s) for 60 s, accounted; quick: the same at 1,000 machines, 5 s."""
    if quick:
        return measure(servers=["granian"], device_counts=[1000], seconds=5, ceiling=(1000, 2000))
    return measure(
        servers=["granian"],
        device_counts=[TARGET_DEVICES],
        seconds=60,
        ceiling=(TARGET_DEVICES, 2 * TARGET_DEVICES),
        ceiling_seconds=15,
    )


def format_row(row: dict) -> str:
    text = (
        f"{row['metric']:<28} n={row['count']:<6} err={row['errors']:<4} "
        f"p50={row['p50']:>8.1f} p95={row['p95']:>8.1f} p99={row['p99']:>8.1f} "
        f"max={row['max']:>8.1f} ms  server CPU {row['server_cpu_pct']:>5.1f} %  "
        f"generator CPU {row['generator_cpu_pct']:>4.1f} %  machine {row['machine_busy_pct']} %"
    )
    if row["met"] is not None:
        text += f"  target {'MET' if row['met'] else 'MISSED'}"
    if row.get("error_kinds"):
        text += f"  {row['error_kinds']}"
    if "commands_received" in row:
        text += f"  delivered {row['commands_received']} confirmed {row['confirmed']}"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=str(TARGET_DEVICES), help="N, or N1,N2,...")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per N")
    parser.add_argument("--server", default="granian", help=f"one or more of {', '.join(SERVERS)}")
    parser.add_argument(
        "--vend-rate", type=float, default=20.0, help="vend requests per second (0: polls only)"
    )
    parser.add_argument("--keys", type=int, default=20, help="API keys the vend clients use")
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument("--loop", choices=LOOPS, default=LOOPS[0], help="the generator's loop")
    parser.add_argument(
        "--ramp-rate",
        type=float,
        default=RAMP_RATE,
        help="machines coming online per second before the window (0: all in one interval)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="first the stub at the largest N and twice it: the generator's own ceiling",
    )
    parser.add_argument(
        "--ceiling-seconds", type=float, default=15.0, help="measured seconds per stub run"
    )
    parser.add_argument("--gunicorn-worker", choices=("gthread", "sync"), default="gthread")
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=None,
        help="CONN_MAX_AGE for the server (default: 0 for ASGI servers, 60 for gunicorn WSGI)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.server.split(",") if s.strip()]
    for server in servers:
        if server not in SERVERS:
            parser.error(f"--server {server!r}: one of {', '.join(SERVERS)}")
    counts = [int(n) for n in args.devices.split(",")]
    if not all(1 <= n <= 50_000 for n in counts) or not 1 <= args.seconds <= 600:
        parser.error("--devices 1..50000 each, --seconds 1..600")
    if not 0 <= args.vend_rate <= 200 or not 1 <= args.keys <= 200:
        parser.error("--vend-rate 0..200, --keys 1..200")
    if not 1 <= args.procs <= 16 or not 1 <= args.ceiling_seconds <= 120:
        parser.error("--procs 1..16, --ceiling-seconds 1..120")
    result = measure(
        servers=servers,
        device_counts=counts,
        seconds=args.seconds,
        ceiling=(max(counts), 2 * max(counts)) if args.ceiling else (),
        ceiling_seconds=args.ceiling_seconds,
        vend_rate=args.vend_rate,
        key_count=args.keys,
        procs=args.procs,
        ramp_rate=args.ramp_rate,
        loop=args.loop,
        gunicorn_worker=args.gunicorn_worker,
        conn_max_age=args.conn_max_age,
    )
    for note in result["notes"]:
        print(f"note: {note}")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
