"""Overload: polls answered within the firmware's 3 s at twice the knee, with and without
shedding (``devices/api/shed_poll.py``, ``DEVICE_POLL_SHED_AFTER``).

    flock /work/bench.lock .venv/bin/python bench/overload.py --server embedded \
        --devices 3000 --rates 400,500,600,700,800 --step 8      # ramp, then 2x both ways
    flock /work/bench.lock .venv/bin/python bench/overload.py --server production \
        --devices 5000 --capacity 1000 --seconds 45 --only shed  # one 2x run, no ramp
    .venv/bin/python bench/run.py --only overload                # the embedded default

The server (``--server``) is the production tier as shipped (``deploy/web.py``: granian
WSGI, 2 workers x 8 threads, PostgreSQL, Redis) or the embedded default (``manage.py
serve``: granian ASGI, one process, SQLite), with ``DEVICE_POLL_SHORTCUT=false``: every poll
goes through Django's device stack and the database. That is the honest case: an overload
happens when polls are slow (a cold cache after a restart, the database slow, a release that
slows the poll); idle polls of kept machines are answered from memory at a rate one
generator process cannot offer on these 2 cores (docs/benchmarks.md), so their knee cannot
be reached here.

The load is open-loop, as ``bench/fleet_polling.py``'s: each machine polls on its own 2 s
clock and a poll's time runs from when it was *scheduled*. For the production tier each poll
carries ``X-Request-Start`` with that time, as nginx's device server block stamps a poll on
arrival: the generator's connections (a bounded :class:`~bench._fleet_load.Pool`) stand in
for the machines' own, so a poll waiting for one of them is a poll queued at the server. The
embedded default has no nginx: the machines talk to it directly (800 connections) and it
knows only its own queue.
An answer later than 3 s after that time is one the firmware gave up on: wasted.

1. **Capacity** (unless ``--capacity``): offered rates stepping up for ``--step`` seconds
   each, shedding on; the capacity is the most polls per second answered within 3 s in a
   step, and the knee the first offered rate whose polls are not all answered in time.
2. **2x**: twice the capacity offered for ``--seconds``, once with ``DEVICE_POLL_SHED_AFTER``
   as shipped (1 s) and once with 0 (off), each against a freshly started server; every 5 s
   the polls answered within 3 s, as a share of the capacity, and the polls shed
   (``vending_polls_shed_total``).

The generator runs on the same 2 cores as the server (its CPU is reported): at 2x it needs
more of them than at 1x, so the share understates the server's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._fleet_load import (
    FLEET_ENV,
    CpuMeter,
    HttpError,
    Pool,
    prepare,
)
from tests.scratch.net import Client, free_port
from tests.scratch.seed import device_id, machine_address
from tests.scratch.stack import Stack, web_argv

NAME = "overload"
POLL_INTERVAL = 2.0
POLL_TIMEOUT = 3.0
BIN = 5.0  # seconds per reported interval
TARGET_SHARE = 0.90
# --server production: nginx's stamp, and its connections to granian; --server embedded:
# the machines talk to manage.py serve directly, each on its own connection (as many as the
# generator can hold open), and the server knows only its own queue.
SERVERS = {
    "production": {"server": "production", "pool": 200, "stamp": True},
    "embedded": {"server": "embedded", "pool": 800, "stamp": False},
}
SETUP = dict(SERVERS["production"])
SLOW = 1.0  # seconds: a poll answered later waited in a queue (the server is not keeping up)
SHED_LAG = 1.25  # DEVICE_POLL_SHED_AFTER as shipped, and the counter's write-behind
ENV = {**FLEET_ENV, "DEVICE_POLL_SHORTCUT": "false", "DEVICE_OFFLINE_AFTER": "60"}


async def offer(
    port: int, *, rate: float, seconds: float, devices: int, sample: bool = False
) -> list[dict]:
    """Polls at ``rate`` per second (``rate * 2`` of the ``devices`` machines, each every
    2 s) for ``seconds``; per :data:`BIN` seconds of their scheduled times: scheduled,
    answered within 3 s, late, failed, and (``sample``) the polls the server shed meanwhile
    (``vending_polls_shed_total`` read every :data:`BIN` seconds, :data:`SHED_LAG` after
    the bin: a poll is shed about that long after it was scheduled)."""
    machines = min(devices, max(int(rate * POLL_INTERVAL), 1))
    loop = asyncio.get_running_loop()
    pool = Pool([port], SETUP["pool"])
    count = int(seconds / BIN) + (seconds % BIN > 0)
    zero = {"scheduled": 0, "in_time": 0, "slow": 0, "late": 0, "failed": 0, "shed": 0}
    bins = [dict(zero) for _ in range(count)]
    t0 = loop.time() + 0.5
    wall0 = time.time() + 0.5
    t_end = t0 + seconds

    async def machine(index: int) -> None:
        path = f"/esp32/commands/{device_id(index)}"
        address = machine_address(index)
        offset = POLL_INTERVAL * index / machines
        sched = t0 + offset
        while sched < t_end:
            await asyncio.sleep(max(sched - loop.time(), 0))
            row = bins[int((sched - t0) / BIN)]
            row["scheduled"] += 1
            headers = {"X-Forwarded-For": address}
            if SETUP["stamp"]:  # what nginx's device server block adds on arrival
                headers["X-Request-Start"] = f"t={wall0 + (sched - t0):.3f}"
            try:
                status, _body = await pool.request(
                    "GET", path, headers=headers, timeout=POLL_TIMEOUT
                )
            except HttpError:
                row["failed"] += 1
            else:
                if status != 200:
                    row["failed"] += 1
                elif loop.time() - sched > POLL_TIMEOUT:
                    row["late"] += 1
                else:
                    row["in_time"] += 1
                    row["slow"] += loop.time() - sched > SLOW
            sched += POLL_INTERVAL

    async def sampler() -> None:
        previous = await loop.run_in_executor(None, shed_total, port)
        for row in bins:
            due = t0 + (bins.index(row) + 1) * BIN + SHED_LAG
            await asyncio.sleep(max(due - loop.time(), 0))
            total = await loop.run_in_executor(None, shed_total, port)
            row["shed"], previous = total - previous, total

    tasks = [asyncio.ensure_future(machine(i)) for i in range(machines)]
    if sample:
        tasks.append(asyncio.ensure_future(sampler()))
    try:
        _done, pending = await asyncio.wait(tasks, timeout=seconds + POLL_TIMEOUT * 4 + 8)
        for task in pending:
            task.cancel()
    finally:
        pool.close()
    return [row for row in bins if row["scheduled"]]


def shed_counts(port: int) -> dict[str, float]:
    """``vending_polls_shed_total`` by reason, from the server's ``/metrics``."""
    client = Client(f"http://127.0.0.1:{port}", timeout=10, headers={"Connection": "close"})
    try:
        _status, _headers, body = client.exchange("GET", "/metrics")
    finally:
        client.close()
    counts: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("vending_polls_shed_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = counts.get(reason, 0.0) + float(line.split()[-1])
    return counts


def shed_total(port: int) -> float:
    return sum(shed_counts(port).values())


def start(stack: Stack, shed_after: str) -> tuple[int, CpuMeter, CpuMeter]:
    import psutil

    stack.stop()
    port = free_port()
    env = {"DEVICE_POLL_SHED_AFTER": shed_after}
    if SETUP["server"] == "production":
        env["CONN_MAX_AGE"] = "60"
        process = stack.start_argv("web", web_argv(f"127.0.0.1:{port}"), env=env, label="web")
    else:  # what make run starts
        serve = ("serve", "--host", "127.0.0.1", "--port", str(port), "--access-log", os.devnull)
        process = stack.start("web", *serve, env=env)
    stack.wait_ready("web", f"http://127.0.0.1:{port}/health", 120)
    time.sleep(2)  # both workers up
    server = psutil.Process(process.pid)
    return port, CpuMeter([server, *server.children(recursive=True)]), CpuMeter([psutil.Process()])


def run_load(stack: Stack, shed_after: str, rate: float, seconds: float, devices: int) -> dict:
    port, server_cpu, own_cpu = start(stack, shed_after)
    asyncio.run(offer(port, rate=min(rate, 50), seconds=4, devices=devices))  # connections, caches
    before = shed_counts(port)
    server_cpu.start()
    own_cpu.start()
    bins = asyncio.run(offer(port, rate=rate, seconds=seconds, devices=devices, sample=True))
    time.sleep(1)  # the shed counter's write-behind
    return {
        "shed_after": shed_after,
        "rate": rate,
        "bins": bins,
        "shed": {k: v - before.get(k, 0.0) for k, v in shed_counts(port).items()},
        "server_cpu": server_cpu.stop(),
        "generator_cpu": own_cpu.stop(),
    }


def find_capacity(
    stack: Stack, rates: list[float], step: float, devices: int
) -> tuple[float, float]:
    """(capacity: the most polls/s answered within 3 s in a step the server kept up with,
    fewer than 1 % of the polls of its last :data:`BIN` seconds waiting over :data:`SLOW`;
    the knee: the first offered rate it did not keep up with). Shedding off: every answer
    is a real one."""
    capacity, knee = 0.0, 0.0
    port, _server, _own = start(stack, "0")
    for rate in rates:
        bins = asyncio.run(offer(port, rate=rate, seconds=step, devices=devices))
        scheduled = sum(b["scheduled"] for b in bins)
        in_time = sum(b["in_time"] for b in bins)
        slow = sum(b["slow"] for b in bins)
        answered = in_time / step
        print(
            f"  offered {rate:6.0f}/s: {answered:6.0f}/s within 3 s ({in_time}/{scheduled}), "
            f"{slow} over {SLOW:.0f} s"
        )
        last = bins[-1]  # the first seconds of a step open connections and warm caches
        if in_time < 0.99 * scheduled or last["slow"] > 0.01 * last["scheduled"]:
            knee = rate
            break
        capacity = max(capacity, answered)
    return capacity, knee


def report(result: dict, capacity: float) -> list[str]:
    label = (
        f"shedding after {result['shed_after']} s" if result["shed_after"] != "0" else "no shedding"
    )
    lines = [f"{label}: offered {result['rate']:.0f} polls/s, capacity {capacity:.0f}/s"]
    lines.append("    t (s)  served in 3 s/s  share  shed/s  late/s  failed/s")
    shares = []
    for n, row in enumerate(result["bins"]):
        per_s = max(row["in_time"] - row["shed"], 0) / BIN  # a shed answer is not service
        share = per_s / capacity
        shares.append(share)
        lines.append(
            f"  {n * BIN:5.0f}-{(n + 1) * BIN:<3.0f} {per_s:15.0f} {share:6.0%} "
            f"{row['shed'] / BIN:7.0f} {row['late'] / BIN:7.0f} {row['failed'] / BIN:8.0f}"
        )
    full = shares
    reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["shed"].items()))
    lines.append(
        f"  lowest share {min(full):.0%}, mean {sum(full) / len(full):.0%}; "
        f"shed {sum(result['shed'].values()):.0f} polls ({reasons}); "
        f"server CPU {result['server_cpu']['cpu_pct']}% of a core, "
        f"generator {result['generator_cpu']['cpu_pct']}%"
    )
    result["lowest_share"] = round(min(full), 3)
    return lines


def measure(
    *,
    server: str,
    devices: int,
    rates: list[float],
    step: float,
    seconds: float,
    capacity: float | None = None,
    factor: float = 2.0,
    only: str | None = None,
) -> dict:
    """The ramp (unless ``capacity``) and the two runs at ``factor`` x capacity, printed as
    they finish; ``{"capacity", "knee", "shed", "noshed"}`` (the runs asked for)."""
    SETUP.update(SERVERS[server])
    results: dict = {"knee": None}
    with Stack(ENV, Path(tempfile.mkdtemp(prefix="overload_"))) as stack:
        if server == "production":
            prepare(stack, devices=devices, keys=1, stock=1, db_prefix="overload_")
        else:  # SQLite and no Redis, as make run
            stack.use_sqlite()
            stack.seed_fleet(devices=devices, keys=1, stock=1)
        if capacity is None:
            print(f"capacity (shedding off, steps of {step:.0f} s):")
            capacity, results["knee"] = find_capacity(stack, rates, step, devices)
            print(f"capacity {capacity:.0f} polls/s within 3 s; knee at {results['knee']:.0f}")
        results["capacity"] = capacity
        runs = [] if only == "ramp" else [("1", "shed"), ("0", "noshed")]
        for shed_after, name in runs:
            if only and only != name:
                continue
            result = run_load(stack, shed_after, factor * capacity, seconds, devices)
            print("\n".join(report(result, capacity)))
            results[name] = result
    return results


def run(quick: bool) -> dict:
    """``bench/run.py --only overload``: the embedded default, ramp and both 2x runs."""
    from bench.common import make_row

    results = measure(
        server="embedded",
        devices=3000,
        rates=[300.0, 400.0, 500.0, 600.0, 700.0, 800.0],
        step=8.0,
        seconds=20.0 if quick else 60.0,
    )
    rows = []
    for name in ("shed", "noshed"):
        result = results[name]
        row = make_row(
            f"overload embedded 2x, {'shedding' if name == 'shed' else 'no shedding'}",
            [],
            target=f"served within 3 s >= {TARGET_SHARE:.0%} of capacity in every {BIN:.0f} s",
            unit="share",
            lowest_share=result["lowest_share"],
            capacity=results["capacity"],
            offered=result["rate"],
            shed=result["shed"],
        )
        row["met"] = result["lowest_share"] >= TARGET_SHARE if name == "shed" else None
        rows.append(row)
    return {
        "scenario": NAME,
        "rows": rows,
        "notes": [
            "served = answered within 3 s less shed; capacity from a ramp with shedding off "
            "(docs/benchmarks.md, Overload)"
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=float, help="polls/s answered in time (skip the ramp)")
    parser.add_argument("--rates", default="800,1000,1200,1400,1600,1800,2000,2400")
    parser.add_argument("--devices", type=int, default=6000, help="machines seeded")
    parser.add_argument("--step", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument(
        "--only", choices=("ramp", "shed", "noshed"), help="the capacity ramp, or one 2x run"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--server", choices=tuple(SERVERS), default="production")
    args = parser.parse_args(argv)
    results = measure(
        server=args.server,
        devices=args.devices,
        rates=[float(r) for r in args.rates.split(",")],
        step=args.step,
        seconds=args.seconds,
        capacity=args.capacity,
        factor=args.factor,
        only=args.only,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
