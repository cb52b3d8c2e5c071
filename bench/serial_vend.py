"""Serial vend latency: REST request -> `VEND:` line at the device -> `succeeded`.

Starts the real web server (``manage.py serve``) and serial bridge as processes on a
throwaway database (SQLite in a temporary DATA_DIR; with --postgres a scratch PostgreSQL
database ``bench_*`` and Redis database 14), with a virtual ESP32 on a pseudo-terminal that
answers at once, then sends vends on a fixed schedule (one every --interval seconds; the
firmware handles one vend at a time). Latencies run from each vend's scheduled time, so a
slow vend that delays the next one shows in the next one's figures too. Loopback only;
bounded.

    .venv/bin/python bench/serial_vend.py --vends 50
    .venv/bin/python bench/serial_vend.py --vends 50 --postgres --json

As a scenario of bench/run.py (``NAME``, ``run(quick)``) it runs this file as a child
process, so Django is set up there and not in the harness.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BASE_ENV,
    DB_PREFIX,
    PASSWORD,
    exit_on_sigterm,
    get_token,
    make_row,
    redis_url,
    services_available,
)
from tests.scratch import databases  # noqa: E402
from tests.scratch.net import Client, wait_http  # noqa: E402

NAME = "serial_vend"
DEVICE_ID = "ESP32_USB_BENCH1"
SETTLE_TIMEOUT = 5.0
QUIET = ("--access-log", "/dev/null")


def measure(vends: int, port: int, interval: float, postgres: bool) -> dict:
    """Run the vends; latencies in seconds from each vend's scheduled time."""
    data_dir = tempfile.mkdtemp(prefix="vending-bench-")
    database = databases.create_database(DB_PREFIX, template=True) if postgres else ""
    # A scratch database always: never the developer's DATA_DIR or DATABASE_URL.
    os.environ.update(
        BASE_ENV,
        DATA_DIR=data_dir,
        PROMETHEUS_MULTIPROC_DIR=str(Path(data_dir) / "metrics"),
        DJANGO_SETTINGS_MODULE="vending_site.settings",
        DATABASE_URL=databases.database_url(database)
        if postgres
        else f"sqlite:///{data_dir}/db.sqlite3",
    )
    if postgres:
        os.environ["REDIS_URL"] = redis_url()
        databases.flush_redis(redis_url())
    else:
        os.environ.pop("REDIS_URL", None)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    manage = [sys.executable, str(ROOT / "manage.py")]
    web = bridge = firmware = firmware_stop = None
    try:
        if not postgres:
            subprocess.run(
                [*manage, "migrate", "--noinput", "-v", "0"],
                check=True,
                env=env,
                cwd=ROOT,
                timeout=180,
            )

        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        from devices.simulators.serial_firmware import SerialFirmware
        from inventory.choices import MovementReason
        from inventory.models import Product, Slot
        from inventory.services import set_stock
        from transactions.models import Transaction
        from vending_site.auth.permissions import VEND_CLIENT_GROUP

        firmware = SerialFirmware(device_id=DEVICE_ID)
        firmware_stop = firmware.start()
        web = subprocess.Popen(
            [*manage, "serve", "--host", "127.0.0.1", "--port", str(port), *QUIET],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bridge = subprocess.Popen(
            [*manage, "run_serial_bridge", "--port", firmware.path],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        connected = threading.Event()

        def drain() -> None:  # one line per vend: keep the pipe from filling
            for line in bridge.stdout:
                if "connected to" in line:
                    connected.set()

        threading.Thread(target=drain, daemon=True).start()
        if not connected.wait(60):
            raise SystemExit("the bridge did not connect")
        product, _ = Product.objects.get_or_create(
            sku="BENCH", defaults={"name": "Bench", "price": 1}
        )
        for slot in Slot.objects.filter(device__device_id=DEVICE_ID):
            Slot.objects.filter(pk=slot.pk).update(product=product, capacity=10_000)
            set_stock(slot=slot, quantity=10_000, reason=MovementReason.RESTOCK)
        bench = get_user_model().objects.create_user("bench", password=PASSWORD)
        bench.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])  # may vend
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=60, process=web)
        token = get_token(url, "bench")
        client = Client(url, headers={"Authorization": f"Bearer {token}"})

        accepted, to_line, settled, errors = [], [], [], []
        not_sent = 0
        t0 = time.monotonic() + 0.2
        stop_at = t0 + vends * interval + 20  # a server far behind: the rest is not sent
        for n in range(vends):
            due = t0 + n * interval
            if time.monotonic() > stop_at:
                not_sent = vends - n
                errors.append(f"{not_sent} vends not sent: the run fell more than 20 s behind")
                break
            time.sleep(max(0.0, due - time.monotonic()))
            seen = len(firmware.received_at)
            try:
                status, body = client.json(
                    "POST", f"/api/v1/vend/{n % 5 + 1}", {"device_id": DEVICE_ID}
                )
            except OSError as exc:
                errors.append(f"vend {n}: {exc!r}")
                continue
            if status not in (201, 202):
                errors.append(f"vend {n}: HTTP {status} {body}")
                continue
            accepted.append(time.monotonic() - due)
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while len(firmware.received_at) == seen and time.monotonic() < deadline:
                time.sleep(0.0005)
            if len(firmware.received_at) == seen:
                errors.append(f"vend {n}: no VEND: line within {SETTLE_TIMEOUT:g} s")
                continue
            to_line.append(firmware.received_at[seen][0] - due)
            state = "sent"
            while time.monotonic() < deadline:
                state = Transaction.objects.filter(pk=body["id"]).values_list("state", flat=True)[0]
                if state not in ("queued", "sent"):
                    break
                time.sleep(0.002)
            if state == "succeeded":
                settled.append(time.monotonic() - due)
            else:
                errors.append(f"vend {n}: {state} after {SETTLE_TIMEOUT:g} s")
        client.close()
    finally:
        for process in (web, bridge):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        if firmware_stop is not None:
            firmware_stop.set()
            firmware.close()
        if database:
            from django.db import connections

            connections.close_all()
            databases.drop_database(database)
            databases.flush_redis(redis_url())
    return {
        "vends": vends,
        "interval": interval,
        "database": "PostgreSQL + Redis" if postgres else "SQLite",
        "accepted": accepted,
        "to_line": to_line,
        "settled": settled,
        "errors": errors,
        "not_sent": not_sent,
    }


def rows_for(figures: dict) -> list[dict]:
    # One message stands for all the vends not sent.
    errors = len(figures["errors"]) + max(figures.get("not_sent", 0) - 1, 0)
    return [
        make_row("REST request -> 202 accepted", figures["accepted"], errors=errors),
        make_row(
            "REST request -> VEND: line at the device",
            figures["to_line"],
            errors=errors,
            target="p50 < 100 ms",
            limit_ms=100.0,
            stat="p50",
        ),
        make_row(
            "REST request -> succeeded",
            figures["settled"],
            errors=errors,
            target="p50 < 250 ms",
            limit_ms=250.0,
            stat="p50",
        ),
    ]


def run(quick: bool) -> dict:
    """The scenario: this file in a child process (its own Django), PostgreSQL when there."""
    vends = 20 if quick else 100
    command = [sys.executable, __file__, "--vends", str(vends), "--json"]
    env = dict(os.environ)
    if not services_available():
        command.append("--postgres")
        # The harness's template: the child clones it instead of migrating again.
        env[databases.TEMPLATE_ENV] = databases.migrated_template(DB_PREFIX)
    child = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = child.communicate(timeout=120 + vends * 2)
    except BaseException:
        # SIGTERM first: the child's own cleanup stops its web server and bridge.
        child.terminate()
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"serial_vend exited {child.returncode}:\n{stderr[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    return {
        "scenario": NAME,
        "rows": rows_for(figures),
        "notes": [
            f"{figures['vends']} vends, one every {figures['interval'] * 1000:.0f} ms, one "
            "manage.py serve + serial bridge (polls the queue every 50 ms), "
            f"{figures['database']}, "
            "pty device answering at once",
            *figures["errors"][:3],
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vends", type=int, default=50)
    parser.add_argument("--port", type=int, default=0, help="web port (default: a free one)")
    parser.add_argument(
        "--interval", type=float, default=0.3, help="seconds between scheduled vends"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="a scratch PostgreSQL database and Redis"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    exit_on_sigterm()
    if not args.port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]
    figures = measure(args.vends, args.port, args.interval, args.postgres)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"serial vend latency, {args.vends} vends every {args.interval * 1000:.0f} ms, "
        f"{figures['database']}, loopback"
    )
    print(f"{'measure':<42} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for row in rows_for(figures):
        print(f"{row['metric']:<42} {row['p50']:8.1f} {row['p95']:8.1f} {row['max']:8.1f}")
    print(f"succeeded: {len(figures['settled'])}/{args.vends}")
    for error in figures["errors"][:5]:
        print(f"  {error}")


if __name__ == "__main__":
    main()
