"""Login pressure: do wrong-password logins take the device polls' capacity?

    .venv/bin/python bench/login_pressure.py                 # 200 machines, 20 s phases
    .venv/bin/python bench/login_pressure.py --quick         # 100 machines, 6 s phases
    .venv/bin/python bench/login_pressure.py --devices 200 --seconds 20 --connections 8 \
        --old-rates 3,5 --out bench/results/login_pressure.json

Checking a password is a PBKDF2 hash (Django's default hasher: about half a second of CPU
here), and the production web tier (granian, ``deploy/web.py``: 2 workers x 8 threads) has
two cores. A security review measured that ~3 wrong passwords a second, under the anonymous
limit of the time, moved the device polls' median from 7 ms to 1.25 s. The fix refuses
them before any hash: ``AUTH_THROTTLE`` (per address, default 10/min) and django-axes
(``AXES_FAILURE_LIMIT`` failures per username or address lock both for
``AXES_COOLOFF_MINUTES``); see ``vending_site/auth/logins.py``.

Three phases, each with ``--devices`` WiFi machines (firmware v2.1) polling
``GET /esp32/commands/<id>`` every 2 s on their own clocks (the fleet benchmark's open-loop
generator, ``bench/fleet_polling.py``: latency from each poll's scheduled time; a poll
answered after the firmware's 3 s timeout is an error, and so is one due in the window but
still waiting behind the machine's previous poll when the load ends):

1. ``baseline``: polls only, the tier as shipped.
2. ``hammer, as shipped``: the same polls while ``--connections`` keep-alive connections
   send ``POST /api/v1/auth/token/`` with a wrong password for a real user, from one client
   address (``X-Forwarded-For``, as nginx adds it), each sending the next as soon as the
   last is answered: as fast as the server answers, for the whole phase.
3. ``old config, R/s``, for each R of ``--old-rates`` (default 3 and 5 a second): a fresh
   tier with the guards off (``AUTH_THROTTLE`` empty, ``AXES_FAILURE_LIMIT`` 1 000 000: axes
   still records each failure but never locks) and the same polls while wrong passwords
   arrive at R per second, open-loop, at most ``--old-connections`` in flight: the finding,
   reproduced. 3/s is the finding's rate: about 1.6 cores of hashing, so whether the polls
   suffer depends on what else the two cores run; 5/s is all the anonymous limit of the
   time (300/min) let one address send, about 2.6 cores of hashing: more than the machine
   has, so the hashes queue in the server's threads and the polls wait behind them.

Everything else is the production configuration: PostgreSQL and Redis (a scratch database
``bench_*`` and Redis database 14, ``bench/common.py``), Django's default password hashers
(not the MD5 hasher of the tests), and the default throttles (``API_THROTTLE_ANON``
300/min, ``DEVICE_THROTTLE``...; each machine polls from an address of its own, as on the
LAN). Each token answer is counted by status (and the 429's ``code``: ``throttled`` by
``AUTH_THROTTLE``, ``locked_out`` by axes). CPU: the granian processes' (% of one core),
the generator's, and the machine's (other users included).

Prints a table, writes ``--out`` (default ``bench/results/login_pressure.json``). About 2 min
in all (two stacks are started). Not in ``bench/run.py``'s suite (it would take most of
``make bench``'s budget); ``run(quick)`` follows bench/CONTRACT.md all the same. Every loop
is bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._fleet_generator import POLL_INTERVAL, POLL_TIMEOUT, WARMUP, drive
from bench._fleet_load import CpuMeter, HttpError, Pool, summary
from bench.common import bench_stack, exit_on_sigterm, machine_info
from tests.scratch.stack import Stack

NAME = "login_pressure"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "login_pressure.json"
TARGET_P99_MS = 100.0  # the fleet benchmark's poll target
ATTACKER = "203.0.113.7"  # one client address (TEST-NET-3), as nginx forwards it
TOKEN_TIMEOUT = 30.0  # seconds a token request may wait (hashes queue behind each other)
MAX_TOKEN_REQUESTS = 200_000  # per phase, whatever the speed: the hammer's count bound
# The settings the tier ships with, which BASE_ENV lifts for the latency benchmarks: this
# scenario measures the shipped limits, so they are removed from the children's environment.
SHIPPED = (
    "API_THROTTLE_VEND",
    "API_THROTTLE_USER",
    "API_THROTTLE_ANON",
    "DEVICE_THROTTLE",
    "DEVICE_ADDRESS_THROTTLE",
    "AUTH_THROTTLE",
    "AXES_FAILURE_LIMIT",
    "AXES_COOLOFF_MINUTES",
)
# The guards off, as before the fix (axes cannot be disabled from the environment; a limit
# no client reaches leaves its bookkeeping, a few queries per failure, beside the hash).
OLD_CONFIG = {"AUTH_THROTTLE": "", "AXES_FAILURE_LIMIT": "1000000"}
OLD_RATES = (3.0, 5.0)  # the finding's rate; all API_THROTTLE_ANON (300/min) lets through


# --- the load ---------------------------------------------------------------------------------


async def _token_requests(
    ports: list[int],
    *,
    username: str,
    start_in: float,
    seconds: float,
    connections: int,
    rate: float | None,
) -> dict:
    """Wrong-password ``POST /api/v1/auth/token/`` from one address, for ``seconds``
    starting ``start_in`` seconds from now: closed-loop on ``connections`` connections when
    ``rate`` is None (each sends its next as soon as it is answered), else open-loop at
    ``rate`` per second (latency from the scheduled time, at most ``connections`` in
    flight). Returns answers by status, latencies (ms), unanswered requests."""
    loop = asyncio.get_running_loop()
    pool = Pool(ports, connections)
    start = loop.time() + start_in
    end = start + seconds
    answers: dict[str, int] = {}
    latencies: list[float] = []
    sent = [0]

    async def one(number: int, scheduled: float) -> None:
        body = json.dumps({"username": username, "password": f"wrong-{number}"}).encode()
        try:
            status, answer = await pool.request(
                "POST",
                "/api/v1/auth/token/",
                body=body,
                headers={"X-Forwarded-For": ATTACKER},
                timeout=TOKEN_TIMEOUT,
            )
        except HttpError as exc:
            key = f"no answer ({str(exc)[:40]})"
        else:
            key = str(status)
            if status == 429:
                try:
                    key += f" {json.loads(answer).get('code', '')}".rstrip()
                except (ValueError, AttributeError):
                    pass
            latencies.append((loop.time() - scheduled) * 1000)
        answers[key] = answers.get(key, 0) + 1

    async def closed_loop() -> None:
        while loop.time() < end and sent[0] < MAX_TOKEN_REQUESTS:
            sent[0] += 1
            await one(sent[0], loop.time())

    await asyncio.sleep(max(start - loop.time(), 0))
    try:
        if rate is None:
            await asyncio.gather(*(closed_loop() for _ in range(connections)))
        else:
            count = min(int(seconds * rate), MAX_TOKEN_REQUESTS)
            sent[0] = count

            async def scheduled(number: int) -> None:
                due = start + number / rate
                await asyncio.sleep(max(due - loop.time(), 0))
                await one(number, due)

            await asyncio.gather(*(scheduled(n) for n in range(count)))
    finally:
        pool.close()
    return {"answers": answers, "latencies": latencies, "sent": sent[0], "seconds": seconds}


async def _phase(
    ports: list[int],
    *,
    devices: int,
    seconds: float,
    meters: tuple[CpuMeter, CpuMeter],
    username: str,
    hammer: dict | None,
) -> tuple[dict, dict | None]:
    """The fleet's polls for a warm-up and ``seconds`` measured; with ``hammer`` (the
    keyword arguments of :func:`_token_requests` but the timing), token requests over the
    same measured window."""
    polls = asyncio.ensure_future(
        drive(ports, devices=devices, seconds=seconds, vend_rate=0, keys=["-"], meters=meters)
    )
    tokens = None
    if hammer is not None:
        # drive measures from 0.5 s + its warm-up after it starts: the same window.
        tokens = await _token_requests(
            ports, username=username, start_in=0.5 + WARMUP, seconds=seconds, **hammer
        )
    # Bounded inside drive (its own timeout); this is a last guard.
    stats = await asyncio.wait_for(polls, timeout=seconds + WARMUP + POLL_TIMEOUT * 3 + 30)
    return stats, tokens


# --- the stack ------------------------------------------------------------------------------


def _start_tier(stack: Stack, devices: int) -> tuple[list[int], list]:
    """The web tier as shipped on ``stack`` with ``devices`` admitted machines and the user
    :attr:`stack.username`; its port and psutil handles of its processes."""
    import psutil

    stack.seed([], [])  # the user whose password is guessed (no machine)
    stack.seed_fleet(devices=devices, keys=0, stock=20)
    url = stack.start_web()
    root = psutil.Process(stack.children["web"].pid)
    return [int(url.rsplit(":", 1)[1])], [root, *root.children(recursive=True)]


def _stack(env: dict[str, str]) -> Stack:
    stack = bench_stack(env)
    for name in SHIPPED:
        if name not in env:
            stack.env.pop(name, None)
    return stack


def _measure_phase(ports, processes, *, label, devices, seconds, username, hammer) -> dict:
    import psutil

    meters = (CpuMeter(processes), CpuMeter([psutil.Process()]))
    stats, tokens = asyncio.run(
        _phase(
            ports,
            devices=devices,
            seconds=seconds,
            meters=meters,
            username=username,
            hammer=hammer,
        )
    )
    # A machine waits for its poll's answer before its next one, so behind an overloaded
    # server polls due in the window may still be unsent when the load ends: failures too.
    unsent = _scheduled_polls(devices, seconds) - len(stats["poll"])
    unsent -= sum(stats["poll_errors"].values())
    if unsent > 0:
        stats["poll_errors"]["not sent or answered by the end"] = unsent
    return {"label": label, "stats": stats, "tokens": tokens}


def _scheduled_polls(devices: int, seconds: float) -> int:
    """Polls due in the measured window: machine ``i`` first polls at ``2 i / N`` s and every
    2 s after (no vend here moves its clock); the window is ``[WARMUP, WARMUP + seconds)``."""
    due = 0
    for index in range(devices):
        first = POLL_INTERVAL * index / devices
        start = math.ceil((WARMUP - first) / POLL_INTERVAL - 1e-9)
        end = math.ceil((WARMUP + seconds - first) / POLL_INTERVAL - 1e-9)
        due += max(end - max(start, 0), 0)
    return due


def _rows(phase: dict, devices: int, seconds: float) -> list[dict]:
    stats, tokens, label = phase["stats"], phase["tokens"], phase["label"]
    server_cpu, generator_cpu = stats["cpu"]
    cpu = {
        "server_cpu_pct": server_cpu["cpu_pct"],
        "generator_cpu_pct": generator_cpu["cpu_pct"],
        "machine_busy_pct": server_cpu["machine_busy_pct"],
    }
    poll_errors = sum(stats["poll_errors"].values())
    judged = not label.startswith("old")  # the old configuration is shown, not judged
    poll = summary(stats["poll"])
    # A poll that failed (no answer within the firmware's 3 s, or a late one) counted as a
    # 3 s answer: the latencies above leave them out, which flatters an overloaded phase.
    floor = summary(stats["poll"] + [POLL_TIMEOUT * 1000] * poll_errors)
    rows = [
        {
            "metric": f"poll, {label} (N={devices})",
            "unit": "ms",
            **poll,
            "errors": poll_errors,
            "target": f"p99 < {TARGET_P99_MS:.0f} ms, 0 errors" if judged else "shown",
            "met": (poll["p99"] < TARGET_P99_MS and poll_errors == 0) if judged else None,
            "phase": label,
            "devices": devices,
            "seconds": seconds,
            "error_kinds": stats["poll_errors"],
            "p50_failed_as_3s": floor["p50"],
            "p99_failed_as_3s": floor["p99"],
            **cpu,
        }
    ]
    if tokens is not None:
        token = summary(tokens["latencies"])
        unanswered = sum(n for k, n in tokens["answers"].items() if k.startswith("no answer"))
        rows.append(
            {
                "metric": f"token, {label}",
                "unit": "ms",
                **token,
                "errors": unanswered,
                "target": "answers by status",
                "met": None,
                "phase": label,
                "answers": dict(sorted(tokens["answers"].items())),
                "answers_per_s": round(sum(tokens["answers"].values()) / tokens["seconds"], 1),
                **cpu,
            }
        )
    return rows


def measure(
    *,
    devices: int,
    seconds: float,
    connections: int,
    old_rates: tuple[float, ...],
    old_connections: int = 64,
    log=print,
) -> dict:
    """The three phases (two stacks); the scenario's result."""
    phases = []
    hammer = {"connections": connections, "rate": None}
    with _stack({}) as stack:
        ports, processes = _start_tier(stack, devices)
        for label, attack in (("baseline", None), ("hammer, as shipped", hammer)):
            phases.append(
                _measure_phase(
                    ports,
                    processes,
                    label=label,
                    devices=devices,
                    seconds=seconds,
                    username=stack.username,
                    hammer=attack,
                )
            )
            log(_line(phases[-1]))
    with _stack(OLD_CONFIG) as stack:
        ports, processes = _start_tier(stack, devices)
        # One after the other on the same tier: a phase ends when its last token request is
        # answered, so the next starts without the previous one's backlog.
        for rate in old_rates:
            phases.append(
                _measure_phase(
                    ports,
                    processes,
                    label=f"old config, {rate:g}/s",
                    devices=devices,
                    seconds=seconds,
                    username=stack.username,
                    hammer={"connections": old_connections, "rate": rate},
                )
            )
            log(_line(phases[-1]))
    rows = [row for phase in phases for row in _rows(phase, devices, seconds)]
    polls = {row["phase"]: row for row in rows if row["metric"].startswith("poll")}
    base = polls["baseline"]["p50"] or 1e-9
    notes = [
        "poll p50 against the baseline (failed polls as 3 s): "
        + ", ".join(
            f"{label} x{row['p50'] / base:.1f} ({row['p50_failed_as_3s'] / base:.1f})"
            for label, row in polls.items()
        ),
        f"{devices} machines polling every 2 s, each from its own address; token requests "
        f"from {ATTACKER}: {connections} connections back to back (as shipped), "
        f"{' and '.join(f'{r:g}/s' for r in old_rates)} open-loop, up to {old_connections} "
        "in flight (old config: "
        "AUTH_THROTTLE empty, AXES_FAILURE_LIMIT 1000000). Production hashers (PBKDF2), "
        "default throttles, PostgreSQL + Redis, granian as deploy/web.py runs it.",
        f"Measured {seconds:g} s per phase after a {WARMUP:.0f} s warm-up; CPU % is of one "
        f"core ({os.cpu_count()} cores); machine % is the whole machine, other users included.",
    ]
    return {"scenario": NAME, "rows": rows, "notes": notes}


def run(quick: bool) -> dict:
    """bench/CONTRACT.md: quick is 100 machines and 6 s phases."""
    if quick:
        return measure(
            devices=100, seconds=6, connections=8, old_rates=OLD_RATES, log=lambda _l: None
        )
    return measure(devices=200, seconds=20, connections=8, old_rates=OLD_RATES, log=lambda _l: None)


# --- output -----------------------------------------------------------------------------------


def _line(phase: dict) -> str:
    poll = summary(phase["stats"]["poll"])
    cpu = phase["stats"]["cpu"][0]
    text = (
        f"{phase['label']}: polls n={poll['count']} p50={poll['p50']} p99={poll['p99']} ms, "
        f"errors {sum(phase['stats']['poll_errors'].values())}, server CPU {cpu['cpu_pct']} %"
    )
    if phase["tokens"]:
        text += f", token answers {phase['tokens']['answers']}"
    return text


def table(result: dict) -> str:
    header = (
        f"{'phase':<22} {'polls':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'err':>5} {'p50*':>7} "
        f"{'srv CPU%':>8} {'gen CPU%':>8} {'mach%':>6}  token answers (per s; p50 ms)"
    )
    lines = [header, "-" * len(header)]
    tokens = {row["phase"]: row for row in result["rows"] if row["metric"].startswith("token")}
    for row in result["rows"]:
        if not row["metric"].startswith("poll"):
            continue
        token = tokens.get(row["phase"])
        answers = "-"
        if token is not None:
            answers = ", ".join(f"{k}: {n}" for k, n in token["answers"].items())
            answers += f" ({token['answers_per_s']}/s; {token['p50']:.0f})"
        lines.append(
            f"{row['phase']:<22} {row['count']:>6} {row['p50']:>8.1f} {row['p95']:>8.1f} "
            f"{row['p99']:>8.1f} {row['errors']:>5} {row['p50_failed_as_3s']:>7.0f} "
            f"{row['server_cpu_pct']:>8.1f} "
            f"{row['generator_cpu_pct']:>8.1f} {row['machine_busy_pct']:>6.1f}  {answers}"
        )
    lines.append(
        "(poll latencies in ms from each poll's scheduled time, answered polls only; p50*: "
        "the median with every failed poll counted as the firmware's 3 s timeout)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 machines, 6 s phases")
    parser.add_argument("--devices", type=int, default=200, help="machines polling (1..2000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured s per phase")
    parser.add_argument("--connections", type=int, default=8, help="token connections (1..64)")
    parser.add_argument(
        "--old-rates",
        default=",".join(f"{r:g}" for r in OLD_RATES),
        help="wrong passwords per s with the guards off, one phase each: R1,R2,...",
    )
    parser.add_argument(
        "--old-connections", type=int, default=64, help="old config: most in flight (1..256)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON written")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.seconds = 100, 6.0
    if not (1 <= args.devices <= 2000 and 1 <= args.seconds <= 300):
        parser.error("--devices 1..2000, --seconds 1..300")
    if not (1 <= args.connections <= 64 and 1 <= args.old_connections <= 256):
        parser.error("--connections 1..64, --old-connections 1..256")
    try:
        old_rates = tuple(float(r) for r in args.old_rates.split(",") if r.strip())
    except ValueError:
        parser.error(f"--old-rates {args.old_rates!r}: numbers separated by commas")
    if not (1 <= len(old_rates) <= 4 and all(0.1 <= r <= 50 for r in old_rates)):
        parser.error("--old-rates: one to four rates, each 0.1..50")
    exit_on_sigterm()
    started = time.monotonic()
    result = measure(
        devices=args.devices,
        seconds=args.seconds,
        connections=args.connections,
        old_rates=old_rates,
        old_connections=args.old_connections,
    )
    result["seconds"] = round(time.monotonic() - started, 1)
    print(table(result))
    for note in result["notes"]:
        print(f"note: {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "quick": args.quick, "args": vars(args) | {"out": ""}}
    report["scenarios"] = [result]
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{result['seconds']} s; wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
