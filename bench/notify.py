"""Webhooks: events written to the outbox at 1,000 a minute -> delivered by a real
``manage.py run_notifier`` to local receivers; the delay from each event to its arrival.

Two phases on one scratch database: two healthy receivers for 2 minutes, then for 30 s the
same two beside a third that holds every request for a minute (the notifier times it out
after ``NOTIFY_TIMEOUT`` and retries it); 20 s each with ``--quick``. Each phase emits from a
child process of its own, one event per transaction, as the vend lifecycle does; the healthy
receivers' p50/p99 should not move with the hanging one beside them. The notifier's CPU is
its process's user + system time over the phase.

    .venv/bin/python -m bench.notify --emit --seconds 5 --rate 16.7 URL ...  # the emitter
"""

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import bench_stack, make_row, services_available  # noqa: E402

NAME = "notify"
RATE = 1000 / 60  # events a second
TARGET_MS = 1000.0
DRAIN_SECONDS = 20.0  # after the last event, for the rest to arrive
HANG_SECONDS = 60.0


def emit_events(urls: list[str], seconds: float, rate: float) -> None:
    """In the child: subscribe ``urls``, then emit ``vend.succeeded`` at ``rate`` a second."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    import django

    django.setup()
    from django.db import transaction

    from vending_site.notify.events import emit
    from vending_site.notify.models import Endpoint

    Endpoint.objects.all().delete()
    for index, url in enumerate(urls):
        Endpoint.objects.create(name=f"bench{index}", url=url, event_types=["vend.succeeded"])
    count = int(seconds * rate)
    start = time.monotonic()
    for index in range(count):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with transaction.atomic():
            emit(
                "vend.succeeded", {"id": str(index), "state": "succeeded"}, subject=f"vend:{index}"
            )
    print(f"emitted {count}", flush=True)


def _latencies(receiver) -> list[float]:
    found = []
    for got in list(receiver.received):
        try:
            sent = datetime.fromisoformat(_body(got)["timestamp"]).timestamp()
        except (KeyError, ValueError, TypeError):
            continue
        found.append(max(got.at - sent, 0.0))
    return found


def _body(got) -> dict:
    import json

    return json.loads(got.body)


def phase(stack, label: str, *, seconds: float, hanging: bool) -> tuple[dict, str]:
    import psutil

    from vending_site.tests.webhook_receiver import Receiver

    healthy = [Receiver().start() for _ in range(2)]
    stuck = Receiver(delay=HANG_SECONDS).start() if hanging else None
    receivers = healthy + ([stuck] if stuck else [])
    try:
        notifier = stack.start(f"notifier-{label}", "run_notifier")
        stack.wait_output(f"notifier-{label}", "notifier ", timeout=60)
        process = psutil.Process(notifier.pid)
        cpu_start, wall_start = process.cpu_times(), time.monotonic()
        argv = [sys.executable, "-m", "bench.notify", "--emit", "--seconds", str(seconds)]
        emitter = stack.start_argv(
            f"emit-{label}", [*argv, "--rate", str(RATE), *(r.url for r in receivers)]
        )
        emitter.wait(timeout=seconds + 120)
        expected = int(seconds * RATE)
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and any(len(r.received) < expected for r in healthy):
            time.sleep(0.1)
        cpu_end, wall_end = process.cpu_times(), time.monotonic()
        cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / (
            wall_end - wall_start
        )
        latencies = [lat for r in healthy for lat in _latencies(r)]
        # One message goes to every endpoint under one webhook-id: count per receiver.
        missing = sum(
            max(expected - len({got.headers.get("webhook-id") for got in r.received}), 0)
            for r in healthy
        )
        row = make_row(
            f"webhook delivered, {label}",
            latencies,
            errors=missing,
            target="p99 < 1 s",
            limit_ms=TARGET_MS,
            notifier_cpu_percent=round(100 * cpu, 1),
            events=expected,
        )
        note = (
            f"{label}: {expected} events to {len(receivers)} receivers in {seconds:g} s, "
            f"{len(latencies)} deliveries to the healthy ones, notifier CPU {100 * cpu:.0f} % "
            "of a core"
            + (f", {len(stuck.received)} requests held by the hanging one" if stuck else "")
        )
    finally:
        for receiver in receivers:
            receiver.stop()
        stack.stop()
        if os.environ.get("BENCH_NOTIFY_DEBUG"):
            print(stack.output(f"notifier-{label}")[-5000:], file=sys.stderr)
            print(stack.output(f"emit-{label}")[-3000:], file=sys.stderr)
    return row, note


def run(quick: bool) -> dict:
    missing = services_available()
    if missing:
        raise RuntimeError(f"needs PostgreSQL and Redis: {missing}")
    phases = (("healthy receivers", False, 120.0), ("one receiver hanging", True, 30.0))
    rows, notes = [], []
    with bench_stack({"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}) as stack:
        for label, hanging, seconds in phases:
            seconds = 20.0 if quick else seconds
            row, note = phase(stack, label, seconds=seconds, hanging=hanging)
            rows.append(row)
            notes.append(note)
    return {"scenario": NAME, "rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emit", action="store_true", help="be the emitter (a child)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("urls", nargs="*")
    args = parser.parse_args()
    if args.emit:
        emit_events(args.urls, args.seconds, args.rate)
        return
    import json

    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
