"""Serial vend latency: REST request -> `VEND:` line at the device -> `succeeded`.

Starts the real web server (Daphne) and serial bridge as processes on a throwaway database
(SQLite in a temporary DATA_DIR, or DATABASE_URL if set), with a virtual ESP32 on a
pseudo-terminal that answers at once, then times sequential vends. Loopback only; bounded.

    .venv/bin/python bench/serial_vend.py --vends 50
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEVICE_ID = "ESP32_USB_BENCH1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def post(url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{url}: {error.code} {error.read().decode()}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vends", type=int, default=50)
    parser.add_argument("--port", type=int, default=0, help="web port (default: a free one)")
    args = parser.parse_args()
    if not args.port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]

    data_dir = tempfile.mkdtemp(prefix="vending-bench-")
    os.environ.setdefault("DATA_DIR", data_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], check=True, env=env, cwd=ROOT)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from devices.simulators.serial_firmware import SerialFirmware
    from inventory.choices import MovementReason
    from inventory.models import Product, Slot
    from inventory.services import set_stock
    from transactions.models import Transaction
    from vending_site.permissions import VEND_CLIENT_GROUP

    firmware = SerialFirmware(device_id=DEVICE_ID)
    firmware_stop = firmware.start()
    web = subprocess.Popen(
        [
            *manage,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            "--access-log",
            "/dev/null",
        ],
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
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = bridge.stdout.readline()
            if "connected to" in line:
                break
        else:
            raise SystemExit("the bridge did not connect")
        # Keep draining the bridge's output (one line per vend) so its pipe never fills.
        threading.Thread(target=bridge.stdout.read, daemon=True).start()
        product, _ = Product.objects.get_or_create(
            sku="BENCH", defaults={"name": "Bench", "price": 1}
        )
        for slot in Slot.objects.filter(device__device_id=DEVICE_ID):
            Slot.objects.filter(pk=slot.pk).update(product=product, capacity=10_000)
            set_stock(slot=slot, quantity=10_000, reason=MovementReason.RESTOCK)
        bench = get_user_model().objects.create_user("bench", password="bench-password-1")
        bench.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])  # may vend
        url = f"http://127.0.0.1:{args.port}"
        for _ in range(100):
            try:
                request = urllib.request.Request(
                    f"{url}/api/v1/auth/token/",
                    json.dumps({"username": "bench", "password": "bench-password-1"}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                token = json.loads(urllib.request.urlopen(request, timeout=5).read())["access"]
                break
            except OSError:
                time.sleep(0.1)

        to_line, accepted, ids = [], [], []
        for n in range(args.vends):
            seen = len(firmware.received_at)
            started = time.monotonic()
            body = post(f"{url}/api/v1/vend/{n % 5 + 1}", {"device_id": DEVICE_ID}, token)
            accepted.append(time.monotonic() - started)
            ids.append(body["id"])
            while len(firmware.received_at) == seen and time.monotonic() - started < 5:
                time.sleep(0.0005)
            to_line.append(firmware.received_at[seen][0] - started)
            while Transaction.objects.filter(pk=body["id"], state="sent").exists():
                time.sleep(0.005)  # one vend at a time, as the serial firmware handles them
        settled = [
            (txn.completed_at - txn.created_at).total_seconds()
            for txn in Transaction.objects.filter(pk__in=ids, state="succeeded")
        ]
    finally:
        for process in (web, bridge):
            process.terminate()
            process.wait(timeout=15)
        firmware_stop.set()
        firmware.close()

    database = "PostgreSQL" if "postgres" in os.environ.get("DATABASE_URL", "") else "SQLite"
    print(f"serial vend latency, {args.vends} sequential vends, {database}, loopback")
    print(f"{'measure':<36} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, values in [
        ("REST request -> 202 answered", accepted),
        ("REST request -> VEND: line at device", to_line),
        ("request -> succeeded (server clock)", settled),
    ]:
        print(
            f"{name:<36} {statistics.median(values) * 1000:8.1f} "
            f"{percentile(values, 0.95) * 1000:8.1f} {max(values) * 1000:8.1f}"
        )
    print(f"succeeded: {len(settled)}/{args.vends}")


if __name__ == "__main__":
    main()
