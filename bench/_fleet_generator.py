"""The fleet's open-loop generator (``bench/fleet_polling.py``, ``bench/soak.py``,
``bench/login_pressure.py``): simulated WiFi machines polling on their own 2 s clocks,
dispensing and confirming as the firmware does, and REST clients vending.

- :func:`drive`: the load from one process (asyncio, the :class:`~bench._fleet_load.Pool`
  of Protocol connections), optionally a share of it (every ``procs``-th machine and vend).
- :func:`offer`: the same load from several processes started together; the parent meters
  the CPU of the server and of the generator over the measured window and merges the
  figures (:func:`merge`).

Latency is measured from each request's scheduled time (no coordinated omission); a poll
answered after the firmware's 3 s is an error. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import traceback

from bench._fleet_load import CpuMeter, HttpError, Pool, request_bytes
from tests.scratch.seed import device_id, mac, machine_address

POLL_INTERVAL = 2.0  # firmware v2.1
POLL_TIMEOUT = 3.0  # the firmware's HTTP read timeout: a later answer is lost
MOTOR_SECONDS = 1.9
LOOPS = ("uvloop", "asyncio")  # the generator processes' event loop, the default first
LATE = "answered after the firmware's 3 s timeout"  # an error kind
WARMUP = POLL_INTERVAL  # every machine polls once (and is marked online) before measuring
MAX_CONNECTIONS = 200  # device connections; the vend clients have their own few
VEND_CONNECTIONS = 20


async def drive(
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
    share: tuple[int, int] = (0, 1),
    t0: float | None = None,
    window_only: bool = False,
    ramp: float = 0.0,
) -> dict:
    """Drive the fleet; returns the figures of the measured window.

    ``share=(k, procs)``: this process drives machines ``k, k + procs, ...`` (each keeping
    its phase among all ``devices``) and vends ``k, k + procs, ...``, with ``1/procs`` of
    the connections; ``t0`` (``time.monotonic()``, the loop's clock) is the start common
    to every process (default: in 0.5 s). ``ramp``: the machines come online over that
    many seconds (machine ``i`` of ``N`` starts ``ramp * i / N`` late, rounded to its own
    clock), as a fleet is switched on, not all in one poll interval. The window starts
    ``ramp + WARMUP`` after ``t0``; polls before it are ``early`` (their latencies) and
    ``early_errors``. Latencies count polls scheduled from the window on (``window_only``:
    only until it ends, not in the tail); errors count from there on, the tail included.

    ``tail``: the machines go on polling (and dispensing) that long after the last vend is
    scheduled, so vends accepted at the end are delivered. ``on_interval(figures)``, if
    given, is called in a worker thread every ``interval`` seconds of the window with the
    figures of that interval, which are then reset (the result holds only the last part).
    ``accepted`` (transaction ids answered 202) and ``dispensed`` (``[device, slot,
    transaction id]`` of every VEND a machine acted on: its own record) cover the whole run.
    ``steady_connections``: every connection of the pools is opened before the first request
    and they take turns (:class:`Pool`'s ``steady``).
    """
    # time.monotonic, not the loop's clock: uvloop's is cached per iteration, in ms.
    now = time.monotonic
    mine, procs = share
    size = max(min(MAX_CONNECTIONS, max(devices // 5, 10)) // procs, 2)
    device_pool = Pool(ports, size, steady=steady_connections)
    vend_pool = Pool(ports, max(VEND_CONNECTIONS // procs, 2), steady=steady_connections)
    if steady_connections:
        await asyncio.gather(device_pool.open_all(), vend_pool.open_all())
    t0 = now() + 0.5 if t0 is None else t0
    measure_from = t0 + ramp + WARMUP
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
        "early": [],
        "accepted": [],
        "dispensed": [],
    }

    def error(kind: str, what: str, sched: float) -> None:
        if sched < measure_from:
            stats["early_errors"] += 1
        else:
            stats[kind][what] = stats[kind].get(what, 0) + 1

    async def machine(index: int) -> None:
        ident = device_id(index)
        raw = request_bytes(
            "GET", f"/esp32/commands/{ident}", headers={"X-Forwarded-For": machine_address(index)}
        )
        sched = t0 + POLL_INTERVAL * (index / devices + int(ramp / POLL_INTERVAL * index / devices))
        poll_until = t_end if window_only else t_end + tail
        while sched < t_end + tail:
            await asyncio.sleep(max(sched - now(), 0))
            try:
                status, body = await device_pool.send(
                    raw, POLL_TIMEOUT, deadline=sched + POLL_TIMEOUT
                )
            except HttpError as exc:
                error("poll_errors", str(exc)[:60], sched)
                sched += POLL_INTERVAL
                continue
            latency = (now() - sched) * 1000
            if status != 200:
                error("poll_errors", f"HTTP {status}", sched)
            elif latency > POLL_TIMEOUT * 1000:
                error("poll_errors", LATE, sched)
            elif measure_from <= sched < poll_until:
                stats["poll"].append(latency)
            elif sched < measure_from:
                stats["early"].append(latency)
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
                resume = now() + POLL_INTERVAL
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
                "timestamp": int(now() * 1000),
            }
        ).encode()
        started = now()
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
        stats["confirm"].append((now() - started) * 1000)
        if b'"status":"ok"' in answer.replace(b" ", b""):
            stats["confirmed"] += 1

    async def vend(number: int, sched: float) -> None:
        await asyncio.sleep(max(sched - now(), 0))
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
        stats["vend"].append((now() - sched) * 1000)
        try:
            stats["accepted"].append(json.loads(answer)["id"])
        except (ValueError, KeyError, TypeError):
            error("vend_errors", "202 without a transaction id", sched)

    async def window() -> None:
        await asyncio.sleep(max(measure_from - now(), 0))
        for meter in meters or ():
            meter.start()
        await asyncio.sleep(max(t_end - now(), 0))
        stats["cpu"] = [meter.stop() for meter in meters or ()]

    async def ticker() -> None:
        due = measure_from
        while due + interval <= t_end + tail + 1e-6:
            due += interval
            await asyncio.sleep(max(due - now(), 0))
            figures = {"at": due - measure_from}
            for key in ("poll", "vend", "confirm"):
                figures[key], stats[key] = stats[key], []
            for key in ("poll_errors", "vend_errors", "confirm_errors"):
                figures[key], stats[key] = stats[key], {}
            for key in ("commands", "confirmed"):
                figures[key], stats[key] = stats[key], 0
            await asyncio.get_running_loop().run_in_executor(None, on_interval, figures)

    total_vends = int(seconds * vend_rate)
    tasks = [asyncio.ensure_future(machine(i)) for i in range(mine, devices, procs)]
    tasks += [
        asyncio.ensure_future(vend(j, measure_from + j / vend_rate))
        for j in range(mine, total_vends, procs)
    ]  # vend_rate 0: polls only
    tasks.append(asyncio.ensure_future(window()))
    if on_interval is not None and interval > 0:
        tasks.append(asyncio.ensure_future(ticker()))
    try:
        # Bounded: a machine stops scheduling at t_end; stragglers get the firmware's
        # timeout plus a motor run and a confirm, then are cancelled.
        done, pending = await asyncio.wait(
            tasks, timeout=t_end + tail - now() + POLL_TIMEOUT * 2 + MOTOR_SECONDS + 5
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


# --- several generator processes ---------------------------------------------------------

LISTS = ("poll", "vend", "confirm", "accepted", "dispensed", "early")
COUNTS = ("commands", "confirmed", "early_errors", "unfinished")
ERRORS = ("poll_errors", "vend_errors", "confirm_errors")


def merge(parts: list[dict]) -> dict:
    """One process's figures from several (:func:`drive` results): lists joined, counts
    and error kinds summed; a transaction dispensed in two processes stays twice in
    ``dispensed``, so the accounting sees it doubled."""
    out: dict = {key: [] for key in LISTS}
    out |= {key: 0 for key in COUNTS} | {key: {} for key in ERRORS}
    for part in parts:
        for key in LISTS:
            out[key] += part.get(key, [])
        for key in COUNTS:
            out[key] += part.get(key, 0)
        for key in ERRORS:
            for what, count in part.get(key, {}).items():
                out[key][what] = out[key].get(what, 0) + count
    return out


def _child(share, options, loop, ready, go, start_at, results) -> None:
    """A generator process: says it is ready, waits for the common start, drives its share
    on the event loop named ``loop`` and hands back its figures (or its traceback)."""
    ready.put(share[0])
    try:
        factory = None
        if loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        if not go.wait(120):
            raise RuntimeError("no start from the parent")
        with asyncio.Runner(loop_factory=factory) as runner:
            stats = runner.run(drive(**options, meters=None, share=share, t0=start_at.value))
        results.put((share[0], stats, None))
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put((share[0], None, traceback.format_exc(limit=8)))


def offer(
    ports: list[int],
    *,
    devices: int,
    seconds: float,
    vend_rate: float,
    keys: list[str],
    procs: int,
    server_processes: list,
    tail: float = 0.0,
    ramp: float = 0.0,
    loop: str = LOOPS[0],
) -> dict:
    """The load of :func:`drive` from ``procs`` processes with one start, each on the event
    loop ``loop`` (:data:`LOOPS`); their merged figures, with ``cpu`` = [server, generator]
    over the measured window."""
    import psutil

    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    start_at = context.Value("d", 0.0)
    options = {
        "ports": ports,
        "devices": devices,
        "seconds": seconds,
        "vend_rate": vend_rate,
        "keys": keys,
        "tail": tail,
        "ramp": ramp,
        "window_only": True,
    }
    children = [
        context.Process(
            target=_child,
            args=((k, procs), options, loop, ready, go, start_at, results),
            daemon=True,
        )
        for k in range(procs)
    ]
    for child in children:
        child.start()
    try:
        for _child_process in children:
            ready.get(timeout=120)
        t0 = time.monotonic() + 1.0
        start_at.value = t0
        go.set()
        meters = (
            CpuMeter(server_processes),
            CpuMeter([psutil.Process(child.pid) for child in children]),
        )
        time.sleep(max(t0 + ramp + WARMUP - time.monotonic(), 0))
        for meter in meters:
            meter.start()
        time.sleep(max(t0 + ramp + WARMUP + seconds - time.monotonic(), 0))
        cpu = [meter.stop() for meter in meters]
        bound = WARMUP + tail + POLL_TIMEOUT * 2 + MOTOR_SECONDS + 30
        parts = [results.get(timeout=bound) for _child_process in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
    failed = [trace for _k, _stats, trace in parts if trace]
    if failed:
        raise RuntimeError(f"a generator process failed:\n{failed[0]}")
    stats = merge([stats for _k, stats, _trace in sorted(parts, key=lambda part: part[0])])
    stats["cpu"] = cpu
    return stats
