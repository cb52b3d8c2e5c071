"""Soak: the fleet load for a long stretch, with every server process's memory and
connections sampled, a verdict per process (flat or growing) and an accounting check.

    make soak                                   # 10 minutes at the fleet target
    make soak-quick                             # 1 minute, 200 machines: a smoke run
    .venv/bin/python bench/soak.py --minutes 3 --devices 500 --server daphne

The stack is a scratch PostgreSQL database ``soak_<pid>_<hex>`` on 127.0.0.1:5432 and Redis
database 11, the web tier under test (``--server``, default granian as ``deploy/web.py``
runs it: WSGI, 2 workers x 8 threads, ``CONN_MAX_AGE=60``), the sweeper
(``sweep_commands --every 5``) and the UDP discovery listener on a free loopback port. The
load is the fleet benchmark's own generator (``bench/fleet_polling.py``): ``--devices`` WiFi
machines polling every 2 s on their own clocks, confirming each VEND as the firmware does,
while REST clients vend at ``--vend-rate`` per second, open-loop. Its keep-alive connections
(one per five machines, at most 200, and 20 for the vend clients) are all opened before the
load starts and used in turn, so the server's socket counts stay flat unless it leaks.

Every ``--every`` seconds (default 10) it samples, in a thread beside the load:

- each server process (granian's main process and its workers, respawned ones included,
  the sweeper, discovery): RSS, open file descriptors, inet sockets, threads (psutil);
- the scratch database's connections (``pg_stat_activity``, by state);
- Redis clients on database 11 (``CLIENT LIST``; the server-wide count is shown beside it);
- the interval's polls, vends and confirmations: counts, latencies, errors.

At the end: a table, ``bench/results/soak.json`` (``--out``), and a verdict per series over
the *second half* of the run (the first half is warm-up: caches, connection pools): the
least-squares slope per minute and the first-to-last difference, flat when both are within
:data:`THRESHOLDS`. Then the accounting check of ``tests/accounting.py`` on every slot and on
the machines' own records, and its outcome line. Exit status 0 when every series is flat
and the accounting holds (errors under overload are reported, not judged: the fleet
benchmark judges latency).

Bounded: the whole run ends within ``minutes + 2`` (set-up time is taken from the load if it
must be, and an alarm ends the run past that); every child is ended in ``finally`` and the
scratch database dropped. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._fleet_generator import POLL_INTERVAL, drive
from bench._fleet_load import SERVERS, account, fleet_stack, prepare, start_server
from bench.fleet_polling import WSGI
from bench.soak_sampler import Sampler
from tests.scratch import databases
from tests.scratch.net import free_port
from tests.scratch.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/11"
DB_PREFIX = "soak_"
TARGET_DEVICES = 1000
TARGET_VEND_RATE = 20.0
SAMPLE_EVERY = 10.0
# The machines keep polling this long after the last vend is scheduled, so a vend accepted
# at the end is delivered, dispensed (1.9 s of motor) and confirmed.
TAIL = 3 * POLL_INTERVAL + 2.0
SETTLE_MAX = 50.0  # at most this long for the sweeper to settle vends still open
STRAGGLERS = 15.0  # the generator's last requests: the firmware's timeout, a motor run
TEARDOWN = 30.0  # kept back from the time bound for accounting and tear-down
OVERRUN = 120.0  # the whole run ends within the load's length plus this


@dataclass(frozen=True)
class Threshold:
    """A series grows when its first-to-last growth exceeds ``growth``, or when its slope
    exceeds ``slope_per_min`` and the rise that slope makes over the judged stretch exceeds
    ``noise`` (so a short run's wobble is not a trend); otherwise it is flat."""

    slope_per_min: float
    growth: float
    noise: float
    unit: str


# Why these: Python's allocator and the server's keep-alive sockets move a few MB and a few
# dozen sockets up and down at steady load; a leak of 1 KB per request at the fleet target
# (500 polls/s) is 30 MB/min, and a leaked connection per second is 60/min, far beyond.
THRESHOLDS = {
    "rss_mb": Threshold(slope_per_min=1.0, growth=8.0, noise=2.0, unit="MB"),
    "fds": Threshold(slope_per_min=4.0, growth=24.0, noise=8.0, unit="fds"),
    "sockets": Threshold(slope_per_min=4.0, growth=24.0, noise=8.0, unit="sockets"),
    "pg_connections": Threshold(slope_per_min=1.0, growth=4.0, noise=2.0, unit="connections"),
    "redis_clients": Threshold(slope_per_min=1.0, growth=4.0, noise=2.0, unit="clients"),
}
MIN_POINTS = 3  # fewer samples in the second half: no verdict
# A slope is judged only over at least this many seconds (a 10-minute soak's second half is
# 300): over less, warm-up still shows (a gunicorn worker's RSS climbed a few MB in its first
# minute) and only the growth limit applies.
MIN_SPAN = 120.0
PROCESS_METRICS = ("rss_mb", "fds", "sockets")
# Judged over a server's workers together, not per worker: the clients' keep-alive
# connections live in whichever worker the kernel handed them to, and move when a client
# reconnects, so one worker's sockets rise as another's fall (measured in a 10-minute soak
# at the fleet target: 176 -> 192 in one worker, 161 -> 140 in the other). A leak in any
# worker still raises the sum; memory stays judged per process.
POOLED_METRICS = ("fds", "sockets")
# --- the verdict (pure) -------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per minute (0.0 if undefined)."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def judge(points: list[tuple[float, float]], threshold: Threshold, *, since: float) -> dict:
    """The trend of ``points`` from ``since`` on: slope per minute, first, last, growth, and
    ``flat`` (``None`` with fewer than :data:`MIN_POINTS` samples there; the slope counts only
    over :data:`MIN_SPAN` seconds or more, ``slope_judged`` says whether it did)."""
    half = sorted(p for p in points if p[0] >= since)
    verdict = {"samples": len(half), "limit": asdict(threshold)}
    if not half:
        return {**verdict, "flat": None}
    slope = slope_per_minute(half)
    growth = half[-1][1] - half[0][1]
    verdict.update(
        slope_per_min=round(slope, 3),
        first=round(half[0][1], 2),
        last=round(half[-1][1], 2),
        growth=round(growth, 2),
    )
    span = half[-1][0] - half[0][0]
    rise = slope * span / 60.0
    verdict["slope_judged"] = span >= MIN_SPAN
    if len(half) < MIN_POINTS:
        verdict["flat"] = None
    else:
        trending = span >= MIN_SPAN and slope > threshold.slope_per_min and rise > threshold.noise
        verdict["flat"] = not trending and growth <= threshold.growth
    return verdict


def verdicts(samples: list[dict], thresholds: dict[str, Threshold] = THRESHOLDS) -> dict:
    """A verdict per process and metric (workers' descriptors and sockets summed per server,
    :data:`POOLED_METRICS`), and for the stack's PostgreSQL and Redis connections, over the
    second half of the sampled time."""
    if not samples:
        return {}
    times = [s["t"] for s in samples]
    since = (min(times) + max(times)) / 2
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for sample in samples:
        pooled: dict[str, dict[str, float]] = {}
        for name, figures in sample["processes"].items():
            server, is_worker, _pid = name.partition(" worker [")
            for metric in PROCESS_METRICS:
                if figures.get(metric) is None:
                    continue
                if is_worker and metric in POOLED_METRICS:
                    together = pooled.setdefault(f"{server} workers together", {})
                    together[metric] = together.get(metric, 0) + figures[metric]
                else:
                    series.setdefault(name, {}).setdefault(metric, []).append(
                        (sample["t"], figures[metric])
                    )
        for name, figures in pooled.items():
            for metric, value in figures.items():
                series.setdefault(name, {}).setdefault(metric, []).append((sample["t"], value))
        for metric in ("pg_connections", "redis_clients"):
            if sample.get(metric) is not None:
                series.setdefault("stack", {}).setdefault(metric, []).append(
                    (sample["t"], sample[metric])
                )
    return {
        name: {
            metric: judge(points, thresholds[metric], since=since)
            for metric, points in metrics.items()
        }
        for name, metrics in series.items()
    }


def all_flat(judged: dict) -> bool:
    """No series grew; a series without a verdict (too few samples) does not fail."""
    return not [v for metrics in judged.values() for v in metrics.values() if v["flat"] is False]


# --- sampling -----------------------------------------------------------------------------


# --- the run ------------------------------------------------------------------------------


def _scalar(stack: Stack, query: str) -> int:
    return stack.sql(query)[0][0] or 0


def _open_vends(stack: Stack) -> int:
    return databases.count_open_vends(stack.database_url)


def run(
    *,
    server: str = "granian",
    devices: int = TARGET_DEVICES,
    seconds: float = 600.0,
    vend_rate: float = TARGET_VEND_RATE,
    keys: int = 20,
    every: float = SAMPLE_EVERY,
    conn_max_age: int | None = None,
    gunicorn_worker: str = "gthread",
    env: dict | None = None,
    keep_logs: bool = True,
    log=print,
) -> dict:
    """Set up, soak for ``seconds`` (less if set-up ate into the bound), sample every
    ``every`` seconds, settle, account; everything within ``seconds + OVERRUN``."""
    deadline = time.monotonic() + seconds + OVERRUN
    age = conn_max_age if conn_max_age is not None else (60 if server in WSGI else 0)
    stack = fleet_stack("soak_bench_")
    stack.env.update(env or {})
    sampler = None
    notes = []
    try:
        started = time.monotonic()
        # Each (machine, slot) the vend clients pick gets at most this many vends.
        stock = math.ceil(seconds * vend_rate / devices) + 5
        seeded = prepare(
            stack, devices=devices, keys=keys, stock=stock, db_prefix=DB_PREFIX, redis_url=REDIS_URL
        )
        ports = start_server(stack, server, gunicorn_worker=gunicorn_worker, conn_max_age=age)
        stack.start("sweeper", "sweep_commands", "--every", "5")
        stack.start(
            "discovery",
            "run_discovery",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port(socket.SOCK_DGRAM)),
        )
        last_movement = _scalar(stack, "SELECT max(id) FROM inventory_stockmovement")
        setup = time.monotonic() - started
        log(f"set up in {setup:.0f} s: {devices} machines, {stock} units per slot, {server}")
        # The settle wait gets what is left after the load (usually nothing is open).
        budget = deadline - time.monotonic() - TAIL - STRAGGLERS - TEARDOWN
        load_seconds = max(min(seconds, budget), every)
        if load_seconds < seconds:
            notes.append(f"set-up took {setup:.0f} s: load shortened to {load_seconds:.0f} s")
        sampler = Sampler(stack, log=log)
        sampler({"at": 0.0})  # before the first poll
        stats = asyncio.run(
            drive(
                ports,
                devices=devices,
                seconds=load_seconds,
                vend_rate=vend_rate,
                keys=seeded["keys"],
                meters=None,
                tail=TAIL,
                interval=every,
                on_interval=sampler,
                # The generator's connections all open and all in use from the start: a
                # lazily grown pool follows the latency (its peak concurrency), and the
                # workers' socket counts would follow it too, leak or no leak.
                steady_connections=True,
            )
        )
        settle_until = min(time.monotonic() + SETTLE_MAX, deadline - TEARDOWN)
        while _open_vends(stack) and time.monotonic() < settle_until:
            time.sleep(1.0)
        accounting = account(stack, last_movement, stats, timeout=TEARDOWN)
        log(accounting["line"])
        if not accounting["ok"]:
            log(json.dumps({k: v for k, v in accounting.items() if k != "line"}, indent=1))
        judged = verdicts(sampler.samples)
        worker_pids = sorted(sampler.workers_seen)
        notes.append(f"{server} worker processes seen: {len(worker_pids)} {worker_pids}")
        notes += _server_trouble(stack)
        return {
            "scenario": "soak",
            "server": server,
            "database": stack.database,
            "conn_max_age": age,
            "devices": devices,
            "vend_rate": vend_rate,
            "seconds": round(load_seconds, 1),
            "sample_every": every,
            "setup_seconds": round(setup, 1),
            "thresholds": {k: asdict(v) for k, v in THRESHOLDS.items()},
            "samples": sampler.samples,
            "verdicts": judged,
            "flat": all_flat(judged),
            "accounting": accounting,
            "unfinished_tasks": stats.get("unfinished", 0),
            "warmup_errors": stats.get("early_errors", 0),
            "notes": notes,
        }
    finally:
        if sampler is not None:
            sampler.close()
        stack.close()
        if keep_logs:
            notes.append(f"server logs kept in {stack.workdir}")
        else:
            shutil.rmtree(stack.workdir, ignore_errors=True)


def _server_trouble(stack: Stack) -> list[str]:
    signs = (
        "Traceback",
        "WORKER TIMEOUT",
        "Unexpected exit from worker",
        "Worker crash loop detected",
        "too many clients",
        "Internal Server Error",
    )
    logs = stack.logs()
    return [f"server logs: {sign!r} {logs.count(sign)}x" for sign in signs if sign in logs]


def format_report(result: dict) -> str:
    lines = [
        f"soak: {result['server']} (CONN_MAX_AGE={result['conn_max_age']}), "
        f"{result['devices']} machines, {result['vend_rate']:g} vends/s, "
        f"{result['seconds']:.0f} s, sampled every {result['sample_every']:g} s",
        "",
        f"{'t s':>6} {'polls':>6} {'p50':>7} {'p99':>7} {'err':>5} {'vends':>5} {'err':>4} "
        f"{'confirms':>8} {'pg':>4} {'redis':>5}  RSS MB per process",
    ]
    for s in result["samples"]:
        rss = " ".join(f"{p['rss_mb']:.0f}" for p in s["processes"].values())
        lines.append(
            f"{s['t']:>6.0f} {s['poll']['count']:>6} {s['poll']['p50']:>7.1f} "
            f"{s['poll']['p99']:>7.1f} {s['poll']['errors']:>5} {s['vend']['count']:>5} "
            f"{s['vend']['errors']:>4} {s['confirm']['count']:>8} {s['pg_connections']:>4} "
            f"{s['redis_clients']!s:>5}  {rss}"
        )
    lines += ["", "verdict over the second half (slope per minute, first -> last):"]
    for name, metrics in result["verdicts"].items():
        parts = []
        for metric, v in metrics.items():
            if "slope_per_min" not in v:
                continue
            word = {True: "flat", False: "GROWING", None: "too few samples"}[v["flat"]]
            if v["flat"] and not v["slope_judged"]:
                word = "flat*"
            parts.append(
                f"{metric} {v['first']:g} -> {v['last']:g} ({v['slope_per_min']:+.2f}/min) {word}"
            )
        lines.append(f"  {name:<28} " + "; ".join(parts))
    limits = ", ".join(
        f"{m} growth <= {t.growth:g} {t.unit} and slope <= {t.slope_per_min:g} {t.unit}/min "
        f"(or a fitted rise <= {t.noise:g})"
        for m, t in THRESHOLDS.items()
    )
    lines += [
        f"  flat means: {limits}",
        f"  flat*: the half is shorter than {MIN_SPAN:.0f} s, so only the growth limit applies",
        "",
        f"accounting: {'OK' if result['accounting']['ok'] else 'FAILED'}; "
        f"{result['accounting']['line']}",
    ]
    lines += [f"note: {note}" for note in result["notes"]]
    lines.append(
        "verdict: "
        + ("flat, no growth" if result["flat"] else "GROWTH (see above)")
        + ("; accounting holds" if result["accounting"]["ok"] else "; ACCOUNTING FAILED")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="soak length (default 10)")
    length.add_argument("--seconds", type=float, default=None, help="soak length in seconds")
    parser.add_argument("--devices", type=int, default=TARGET_DEVICES)
    parser.add_argument("--vend-rate", type=float, default=TARGET_VEND_RATE)
    parser.add_argument("--keys", type=int, default=20, help="API keys the vend clients use")
    parser.add_argument("--server", choices=SERVERS[:-1], default="granian")
    parser.add_argument("--gunicorn-worker", choices=("gthread", "sync"), default="gthread")
    parser.add_argument(
        "--conn-max-age", type=int, default=None, help="default 60 for granian and gunicorn"
    )
    parser.add_argument("--every", type=float, default=SAMPLE_EVERY, help="seconds per sample")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 10)
    if not 10 <= seconds <= 4 * 3600:
        parser.error("the soak lasts 10 s to 4 hours")
    if not 1 <= args.devices <= 5000 or not 0 <= args.vend_rate <= 200:
        parser.error("--devices 1..5000, --vend-rate 0..200")
    if not 1 <= args.every <= seconds / 2 or not 1 <= args.keys <= 200:
        parser.error("--every 1 s .. half the run, --keys 1..200")

    def out_of_time(signum, frame):
        raise SystemExit(f"soak: past its bound of {seconds + OVERRUN:.0f} s, stopping")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(seconds + OVERRUN - 20))  # 20 s left to end the children, drop the db
    try:
        result = run(
            server=args.server,
            devices=args.devices,
            seconds=seconds,
            vend_rate=args.vend_rate,
            keys=args.keys,
            every=args.every,
            conn_max_age=args.conn_max_age,
            gunicorn_worker=args.gunicorn_worker,
        )
    finally:
        signal.alarm(0)
    from bench.common import machine_info

    result["machine"] = {**machine_info(), "redis_url": REDIS_URL}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_report(result))
    print(f"written: {out}")
    return 0 if result["flat"] and result["accounting"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
