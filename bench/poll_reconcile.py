"""Time one reconciliation of what a worker keeps (devices/poll_cache.py) against the reads
it replaces.

    flock /work/bench.lock .venv/bin/python bench/poll_reconcile.py [--machines 10000]
        [--rounds 20] [--chunk 500]

Creates a throwaway test database (SQLite by default; ``DATABASE_URL`` picks PostgreSQL),
``--machines`` approved, bound WiFi machines with nothing queued, and keeps every one in this
process, as a worker does once they have all polled. Then prints, in this one process:

- one reconciliation (``poll_cache.reconcile``) of them all: its queries, wall and CPU time
  (median and max of ``--rounds``), nothing changed;
- the same with 1 % of the machines given a queued command meanwhile (what it drops);
- one idle poll's read (``selectors.device_for_poll``), what a kept answer costs each time
  it lapses without reconciliation: ``--machines`` answers kept ~4.4 s on average
  (``DEVICE_POLL_CACHE_SECONDS`` 5, jittered over its last quarter) is that many reads a
  second, against one reconciliation every ``DEVICE_POLL_RECONCILE_SECONDS``.

Bounded: at most 50 000 machines and 100 rounds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("CONN_MAX_AGE", "60")  # as deploy/web.py runs it
os.environ.setdefault("DEVICE_POLL_RECONCILE_SECONDS", "0")  # the bench runs it, not a thread
# Kept through the setup (10,000 reads take seconds); a reconciliation costs the same anyway.
os.environ["DEVICE_POLL_CACHE_SECONDS"] = "3600"
os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="poll-reconcile-"))


def timed(action, rounds: int) -> tuple[list[float], list[float], int]:
    """(wall ms, CPU ms, queries of the last) of ``rounds`` calls of ``action``."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    walls, cpus, queries = [], [], 0
    for _ in range(rounds):
        with CaptureQueriesContext(connection) as captured:
            wall, cpu = time.perf_counter(), time.process_time()
            action()
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        queries = len(captured)
    return walls, cpus, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=0, help="machines a query (default: CHUNK)")
    args = parser.parse_args()
    machines = max(1, min(args.machines, 50_000))
    rounds = max(1, min(args.rounds, 100))

    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone

    from devices import poll_cache
    from devices.choices import CommandKind
    from devices.models import Command, Device
    from devices.selectors import device_for_poll

    if args.chunk:
        poll_cache.CHUNK = args.chunk
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        now = timezone.now()
        ids = [f"ESP32_{i:012X}" for i in range(machines)]
        Device.objects.bulk_create(
            [
                Device(
                    device_id=device_id,
                    last_seen=now,
                    bound_address=f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}",
                    last_address=f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}",
                )
                for i, device_id in enumerate(ids)
            ],
            batch_size=1000,
        )
        kept_started = time.perf_counter()
        for device_id in ids:
            token = poll_cache.begin()
            poll_cache.remember(device_for_poll(device_id), token)
        read_ms = (time.perf_counter() - kept_started) * 1000 / machines
        assert all(poll_cache.cached(device_id) for device_id in ids), "not all kept"
        print(
            f"{connection.vendor}: {machines} machines kept, chunk {poll_cache.CHUNK}, "
            f"{rounds} rounds"
        )

        walls, cpus, queries = timed(poll_cache.reconcile, rounds)
        print(
            f"  reconciliation, nothing changed: {queries} queries, "
            f"wall median {statistics.median(walls):.1f} ms (max {max(walls):.1f}), "
            f"CPU median {statistics.median(cpus):.1f} ms (max {max(cpus):.1f})"
        )

        changed = ids[:: max(1, machines // (machines // 100 or 1))][: max(1, machines // 100)]
        devices = Device.objects.in_bulk(changed, field_name="device_id")
        Command.objects.bulk_create(
            [
                Command(
                    device=devices[device_id],
                    kind=CommandKind.VEND,
                    slot=1,
                    created_at=now,
                    expires_at=now + timedelta(seconds=300),
                )
                for device_id in changed
            ]
        )  # bulk_create sends no post_save: as if every announcement was lost
        dropped = []
        walls, cpus, queries = timed(lambda: dropped.append(poll_cache.reconcile()), 1)
        print(
            f"  reconciliation, {len(changed)} machines given a command unannounced: "
            f"{queries} queries, {dropped[0]} dropped, wall {walls[0]:.1f} ms, "
            f"CPU {cpus[0]:.1f} ms"
        )

        sample = ids[: min(machines, 2000)]
        started = time.perf_counter()
        for device_id in sample:
            device_for_poll(device_id)
        single_ms = (time.perf_counter() - started) * 1000 / len(sample)
        per_second = machines / (5 * 0.875)
        print(
            f"  one idle poll's read: {single_ms * 1000:.0f} µs "
            f"(while keeping: {read_ms * 1000:.0f} µs); without reconciliation "
            f"{per_second:.0f} reads/s = {per_second * single_ms:.0f} ms of every second"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
