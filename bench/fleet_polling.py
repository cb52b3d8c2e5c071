"""Scenario 1, fleet polling: N WiFi machines polling every 2 s while REST clients vend.

    .venv/bin/python bench/fleet_polling.py --devices 1000 --seconds 30 --server daphne
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

``--server`` picks what serves the app: ``granian`` (the production server, as
``deploy/web.py`` runs it: WSGI, 2 workers x 8 threads), ``daphne`` (2 processes, as
Procfile.prod-local), ``uvicorn`` (2 processes, lifespan off), ``gunicorn`` (WSGI, 2 gthread
or sync workers; the production server before granian),
``gunicorn-asgi`` (gunicorn 27's own ASGI worker) or ``stub`` (no Django: the generator's
own floor and ceiling). The generator spreads its connections over the ports itself (no
nginx). ``--conn-max-age`` overrides CONN_MAX_AGE (default 0 for ASGI, 60 for WSGI).

The server runs against a scratch PostgreSQL database (``fleet_*``) and Redis db 15; its
processes' CPU (psutil) and the generator's own CPU are measured over the measured window.
Every load loop is bounded in count and in time; every child is ended in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._fleet_load import (
    SERVERS,
    CpuMeter,
    HttpError,
    Pool,
    fleet_stack,
    prepare,
    start_server,
    summary,
)
from tests.scratch.seed import device_id, mac, machine_address

NAME = "fleet_polling"
POLL_INTERVAL = 2.0  # firmware v2.1
POLL_TIMEOUT = 3.0  # the firmware's HTTP read timeout: a later answer is lost
MOTOR_SECONDS = 1.9
TARGET_DEVICES = 1000
TARGET_P99_MS = 100.0
WARMUP = POLL_INTERVAL  # every machine polls once (and is marked online) before measuring
MAX_CONNECTIONS = 200  # device connections; the vend clients have their own few


async def _load(
    ports: list[int],
    *,
    devices: int,
    seconds: float,
    vend_rate: float,
    keys: list[str],
    meters: tuple[CpuMeter, CpuMeter] | None,
    tail: float = 0.0,
    interval: float = 0.0,
    on_interval=None,
    steady_connections: bool = False,
) -> dict:
    """Drive the fleet; returns the figures of the measured window.

    ``tail``: the machines go on polling (and dispensing) that long after the last vend is
    scheduled, so vends accepted at the end are delivered. ``on_interval(figures)``, if
    given, is called in a worker thread every ``interval`` seconds of the window with the
    figures of that interval, which are then reset (the result holds only the last part).
    ``accepted`` (transaction ids answered 202) and ``dispensed`` (``[device, slot,
    transaction id]`` of every VEND a machine acted on: its own record) cover the whole run.
    ``steady_connections``: every connection of the pools is opened before the first request
    and they take turns (:class:`Pool`'s ``steady``).
    """
    loop = asyncio.get_running_loop()
    size = min(MAX_CONNECTIONS, max(devices // 5, 10))
    device_pool = Pool(ports, size, steady=steady_connections)
    vend_pool = Pool(ports, 20, steady=steady_connections)
    if steady_connections:
        await asyncio.gather(device_pool.open_all(), vend_pool.open_all())
    t0 = loop.time() + 0.5
    measure_from = t0 + WARMUP
    t_end = measure_from + seconds
    stats = {
        "poll": [],
        "poll_errors": {},
        "vend": [],
        "vend_errors": {},
        "confirm": [],
        "confirm_errors": {},
        "commands": 0,
        "confirmed": 0,
        "early_errors": 0,
        "accepted": [],
        "dispensed": [],
    }

    def error(kind: str, what: str, sched: float) -> None:
        if sched < measure_from:
            stats["early_errors"] += 1
        else:
            stats[kind][what] = stats[kind].get(what, 0) + 1

    async def machine(index: int) -> None:
        ident, headers = device_id(index), {"X-Forwarded-For": machine_address(index)}
        sched = t0 + POLL_INTERVAL * index / devices
        while sched < t_end + tail:
            await asyncio.sleep(max(sched - loop.time(), 0))
            try:
                status, body = await device_pool.request(
                    "GET", f"/esp32/commands/{ident}", headers=headers, timeout=POLL_TIMEOUT
                )
            except HttpError as exc:
                error("poll_errors", str(exc)[:60], sched)
                sched += POLL_INTERVAL
                continue
            latency = (loop.time() - sched) * 1000
            if status != 200:
                error("poll_errors", f"HTTP {status}", sched)
            elif latency > POLL_TIMEOUT * 1000:
                error("poll_errors", "answered after the firmware's 3 s timeout", sched)
            elif sched >= measure_from:
                stats["poll"].append(latency)
            try:
                command = json.loads(body) if status == 200 and body.strip() else None
            except ValueError:
                error("poll_errors", "answer is not JSON", sched)
                command = None
            if isinstance(command, dict) and command.get("command") == "VEND":
                stats["commands"] += 1
                stats["dispensed"].append(
                    [ident, command.get("slot"), command.get("transaction_id")]
                )
                await asyncio.sleep(MOTOR_SECONDS)
                await confirm(index, command.get("slot"))
                resume = loop.time() + POLL_INTERVAL
                while sched < resume:  # the next tick of its own clock
                    sched += POLL_INTERVAL
            else:
                sched += POLL_INTERVAL

    async def confirm(index: int, slot) -> None:
        body = json.dumps(
            {
                "device_id": mac(index),
                "slot": slot,
                "success": True,
                "message": "Item dispensed successfully",
                "timestamp": int(loop.time() * 1000),
            }
        ).encode()
        started = loop.time()
        try:
            status, answer = await device_pool.request(
                "POST",
                "/esp32/confirm",
                body=body,
                timeout=POLL_TIMEOUT,
                headers={"X-Forwarded-For": machine_address(index)},
            )
        except HttpError as exc:
            error("confirm_errors", str(exc)[:60], started)
            return
        if status != 200:
            error("confirm_errors", f"HTTP {status}", started)
            return
        stats["confirm"].append((loop.time() - started) * 1000)
        if b'"status":"ok"' in answer.replace(b" ", b""):
            stats["confirmed"] += 1

    async def vend(number: int, sched: float) -> None:
        await asyncio.sleep(max(sched - loop.time(), 0))
        # Spread over the polling machines and their five slots.
        target = device_id((number * 7919) % devices)
        body = json.dumps({"device_id": target}).encode()
        headers = {"Authorization": f"Api-Key {keys[number % len(keys)]}"}
        try:
            status, answer = await vend_pool.request(
                "POST",
                f"/api/v1/vend/{number % 5 + 1}",
                body=body,
                headers=headers,
                timeout=10.0,
            )
        except HttpError as exc:
            error("vend_errors", str(exc)[:60], sched)
            return
        if status != 202:
            code = ""
            try:
                code = json.loads(answer).get("code", "")
            except ValueError:
                pass
            error("vend_errors", f"HTTP {status} {code}".strip(), sched)
            return
        stats["vend"].append((loop.time() - sched) * 1000)
        try:
            stats["accepted"].append(json.loads(answer)["id"])
        except (ValueError, KeyError, TypeError):
            error("vend_errors", "202 without a transaction id", sched)

    async def window() -> None:
        await asyncio.sleep(max(measure_from - loop.time(), 0))
        for meter in meters or ():
            meter.start()
        await asyncio.sleep(max(t_end - loop.time(), 0))
        stats["cpu"] = [meter.stop() for meter in meters or ()]

    async def ticker() -> None:
        due = measure_from
        while due + interval <= t_end + tail + 1e-6:
            due += interval
            await asyncio.sleep(max(due - loop.time(), 0))
            figures = {"at": due - measure_from}
            for key in ("poll", "vend", "confirm"):
                figures[key], stats[key] = stats[key], []
            for key in ("poll_errors", "vend_errors", "confirm_errors"):
                figures[key], stats[key] = stats[key], {}
            for key in ("commands", "confirmed"):
                figures[key], stats[key] = stats[key], 0
            await loop.run_in_executor(None, on_interval, figures)

    total_vends = int(seconds * vend_rate)
    tasks = [asyncio.ensure_future(machine(i)) for i in range(devices)]
    tasks += [
        asyncio.ensure_future(vend(j, measure_from + j / vend_rate)) for j in range(total_vends)
    ]  # vend_rate 0: polls only
    tasks.append(asyncio.ensure_future(window()))
    if on_interval is not None and interval > 0:
        tasks.append(asyncio.ensure_future(ticker()))
    try:
        # Bounded: a machine stops scheduling at t_end; stragglers get the firmware's
        # timeout plus a motor run and a confirm, then are cancelled.
        done, pending = await asyncio.wait(
            tasks, timeout=t_end + tail - loop.time() + POLL_TIMEOUT * 2 + MOTOR_SECONDS + 5
        )
        for task in pending:
            task.cancel()
        stats["unfinished"] = len(pending)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        device_pool.close()
        vend_pool.close()
    return stats


def _rows(server: str, devices: int, seconds: float, vend_rate: float, stats: dict) -> list:
    server_cpu, generator_cpu = stats["cpu"]
    poll_errors = sum(stats["poll_errors"].values())
    vend_errors = sum(stats["vend_errors"].values())
    common = {
        "server": server,
        "devices": devices,
        "seconds": seconds,
        "server_cpu_pct": server_cpu["cpu_pct"],
        "generator_cpu_pct": generator_cpu["cpu_pct"],
        "machine_busy_pct": server_cpu["machine_busy_pct"],
    }
    poll = summary(stats["poll"])
    requests = (
        poll["count"] + poll_errors + len(stats["vend"]) + vend_errors + len(stats["confirm"])
    )
    at_target = devices == TARGET_DEVICES
    poll_row = {
        "metric": f"poll {server} N={devices}",
        "unit": "ms",
        **poll,
        "errors": poll_errors,
        "target": f"p99 < {TARGET_P99_MS:.0f} ms, 0 errors at {TARGET_DEVICES} devices",
        "met": (poll["p99"] < TARGET_P99_MS and poll_errors == 0) if at_target else None,
        **common,
        "polls_per_s": round(poll["count"] / seconds, 1),
        # All requests of the window (polls, vends, confirms), answered or not.
        "server_cpu_ms_per_request": round(
            10 * server_cpu["cpu_pct"] / max(requests / seconds, 1e-9), 2
        ),
        "error_kinds": stats["poll_errors"],
        "warmup_errors": stats["early_errors"],
    }
    vend = summary(stats["vend"])
    vend_row = {
        "metric": f"vend {server} N={devices}",
        "unit": "ms",
        **vend,
        "errors": vend_errors,
        "target": f"{vend_rate:g}/s scheduled, reported (no latency target)",
        "met": None,
        **common,
        "error_kinds": stats["vend_errors"],
        "commands_received": stats["commands"],
        "confirmed": stats["confirmed"],
    }
    confirm = summary(stats["confirm"])
    confirm_row = {
        "metric": f"confirm {server} N={devices}",
        "unit": "ms",
        **confirm,
        "errors": sum(stats["confirm_errors"].values()),
        "target": "reported (no target)",
        "met": None,
        **common,
        "error_kinds": stats["confirm_errors"],
    }
    return [poll_row, vend_row, confirm_row]


def measure(
    *,
    servers: list[str],
    device_counts: list[int],
    seconds: float,
    then: tuple[tuple[str, int], ...] = (),
    vend_rate: float = 20.0,
    key_count: int = 20,
    gunicorn_worker: str = "gthread",
    conn_max_age: int | None = None,
    log=print,
) -> dict:
    """Run every (server, N) pair on one scratch stack, then each ``then`` (server, N);
    returns the scenario's result."""
    import psutil

    rows, notes = [], []
    stack = fleet_stack()
    try:
        started = time.monotonic()
        if set(servers) == {"stub"}:  # no Django, no database
            seeded = {"keys": ["stub.key"], "devices": max(device_counts)}
        else:
            most = max([*device_counts, *(n for _server, n in then)])
            seeded = prepare(stack, devices=most, keys=key_count, stock=20)
            log(f"seeded {seeded['devices']} machines in {time.monotonic() - started:.0f} s")
        plan = [(server, device_counts) for server in servers]
        plan += [(server, [devices]) for server, devices in then]
        for server, counts in plan:
            age = conn_max_age if conn_max_age is not None else (60 if server in WSGI else 0)
            ports = start_server(stack, server, gunicorn_worker=gunicorn_worker, conn_max_age=age)
            try:
                for devices in counts:
                    meters = (CpuMeter(stack.processes()), CpuMeter([psutil.Process()]))
                    stats = asyncio.run(
                        _load(
                            ports,
                            devices=devices,
                            seconds=seconds,
                            vend_rate=vend_rate,
                            keys=seeded["keys"],
                            meters=meters,
                        )
                    )
                    for row in _rows(server, devices, seconds, vend_rate, stats):
                        rows.append(row)
                        log(format_row(row))
            finally:
                stack.stop()
            label = server + (f" ({gunicorn_worker})" if server == "gunicorn" else "")
            notes.append(f"{label}: CONN_MAX_AGE={age}; {describe(server, gunicorn_worker)}")
            notes += _server_trouble(label, stack.logs(f"{server}-[0-9]*"))
    finally:
        stack.close()
    notes.append(f"server logs kept in {stack.workdir}")
    notes += _knees(rows)
    notes.append(
        "Open-loop: latency from each request's scheduled time; devices share at most "
        f"{MAX_CONNECTIONS} keep-alive connections (vend clients 20 more), spread round-robin "
        "over the server's ports by the generator (no nginx in front)."
    )
    notes.append(
        f"Measured after a {WARMUP:.0f} s warm-up (every machine polled once); CPU % is of one "
        f"core ({os.cpu_count()} cores); machine_busy_pct is the whole machine, other users "
        "included."
    )
    return {"scenario": NAME, "rows": rows, "notes": notes}


# Each compared server at an N where it still answers beside granian, so p99s compare:
# gunicorn (the production server before granian) at the target, Daphne where it still can.
COMPARED = (("gunicorn", TARGET_DEVICES), ("daphne", 300))
WSGI = ("granian", "gunicorn")  # CONN_MAX_AGE 60 by default, as deploy/web.py runs it


def _server_trouble(label: str, logs: str) -> list[str]:
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


def _knees(rows: list[dict]) -> list[str]:
    notes = []
    by_server: dict[str, list[dict]] = {}
    for row in rows:
        if row["metric"].startswith("poll "):
            by_server.setdefault(row["server"], []).append(row)
    for server, polls in by_server.items():
        polls.sort(key=lambda row: row["devices"])
        bad = [r for r in polls if r["p99"] >= TARGET_P99_MS or r["errors"] > 0]
        if bad:
            good = [r["devices"] for r in polls if r["devices"] < bad[0]["devices"]]
            notes.append(
                f"knee ({server}): poll p99 >= {TARGET_P99_MS:.0f} ms or errors from "
                f"N={bad[0]['devices']} (p99 {bad[0]['p99']} ms, {bad[0]['errors']} errors, "
                f"server CPU {bad[0]['server_cpu_pct']} %)"
                + (f"; fine up to N={good[-1]}" if good else "")
            )
        else:
            notes.append(
                f"knee ({server}): not reached up to N={polls[-1]['devices']} "
                f"(p99 {polls[-1]['p99']} ms)"
            )
    return notes


def run(quick: bool) -> dict:
    """The scenario as the harness calls it: the shipped web tier (granian) over N, then
    gunicorn (the previous one) and Daphne each at one N for comparison; quick is granian at
    100 and 1000 for 5 s."""
    if quick:
        return measure(servers=["granian"], device_counts=[100, 1000], seconds=5)
    counts = [100, 300, 500, 1000, 1500, 2000]
    result = measure(servers=["granian"], device_counts=counts, seconds=20, then=COMPARED)
    for _server, devices in COMPARED:
        result["notes"] += _comparison(result["rows"], devices)
    return result


def _comparison(rows: list[dict], devices: int) -> list[str]:
    """One line ranking the servers at ``devices``: errors first, then poll p99."""
    polls = [r for r in rows if r["metric"].startswith("poll ") and r["devices"] == devices]
    if len(polls) < 2:
        return []
    polls.sort(key=lambda r: (r["errors"], r["p99"]))
    ranking = ", ".join(
        f"{r['server']} (p99 {r['p99']} ms, {r['errors']} errors, CPU {r['server_cpu_pct']} %)"
        for r in polls
    )
    return [f"servers at N={devices}, best first: {ranking}"]


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
    if not all(1 <= n <= 5000 for n in counts) or not 1 <= args.seconds <= 600:
        parser.error("--devices 1..5000 each, --seconds 1..600")
    if not 0 <= args.vend_rate <= 200 or not 1 <= args.keys <= 200:
        parser.error("--vend-rate 0..200, --keys 1..200")
    result = measure(
        servers=servers,
        device_counts=counts,
        seconds=args.seconds,
        vend_rate=args.vend_rate,
        key_count=args.keys,
        gunicorn_worker=args.gunicorn_worker,
        conn_max_age=args.conn_max_age,
    )
    result["notes"] += _comparison(result["rows"], max(counts)) if len(servers) > 1 else []
    for note in result["notes"]:
        print(f"note: {note}")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
