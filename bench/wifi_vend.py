"""WiFi vend with the deployed firmware's timing: REST request -> command delivered -> succeeded.

Simulated v2.1 machines (devices/simulators/wifi_firmware.py) poll every 2 s (from the end
of one poll), run the motor 1.3 s, confirm, and pause 2 s, against two ``manage.py serve``
processes on PostgreSQL + Redis with the sweeper running. Vends arrive open-loop: each
machine gets one every 7 s (longer than a whole vend cycle) at a jittered time, so requests
land at every phase of the poll cycle; latencies run from the scheduled request time to the
moment the machine holds the command, and to the moment its confirmation was answered.
"""

import random
import secrets
import threading
import time
from collections import defaultdict

from bench.common import bench_stack, get_token, make_row, open_loop, thread_client
from devices.simulators.wifi_firmware import WifiFirmware

NAME = "wifi_vend"
PERIOD = 7.0  # seconds between two vends of one machine
JITTER = 2.0  # the poll interval: vends land at every phase of it
SETTLE_TIMEOUT = 20.0


class Witness:
    """When each machine received each vend and when its confirmation was answered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered: dict[str, float] = {}
        self.confirmed: dict[str, tuple[float, int | None]] = {}
        self.by_command: dict[object, str] = {}
        self.events: dict[str, threading.Event] = defaultdict(threading.Event)

    def record(self, entry: dict) -> None:
        now = time.monotonic()
        with self.lock:
            if entry["event"] == "command" and entry.get("transaction_id"):
                txn = entry["transaction_id"]
                self.delivered.setdefault(txn, now)
                self.by_command[entry.get("command_id")] = txn
            elif entry["event"] == "confirm":
                txn = self.by_command.get(entry.get("command_id"))
                if txn is not None:
                    self.confirmed.setdefault(txn, (now, entry.get("status")))
                    self.events[txn].set()

    def wait(self, txn: str, timeout: float) -> bool:
        with self.lock:
            event = self.events[txn]
        return event.wait(timeout)


def measure(quick: bool) -> tuple[list[dict], str]:
    # Quick: one vend per machine, spread over 4 s instead of a whole period.
    devices, per_device, spread = (4, 1, 4.0) if quick else (6, 4, PERIOD)
    witness = Witness()
    seed = secrets.randbelow(0xFFFF)
    with bench_stack({}) as stack:
        urls = stack.start_workers(2)
        stack.start("sweeper", "sweep_commands", "--every", "5")
        machines = [
            WifiFirmware(
                index=n + 1,
                seed=seed,
                server_url=urls[n % len(urls)],
                poll_interval=2.0,
                vend_seconds=1.3,
                after_confirm=2.0,
                on_record=witness.record,
            )
            for n in range(devices)
        ]
        stack.seed(devices=[m.device_id for m in machines], stock=[100] * 5)
        token = get_token(urls[0], stack.username)
        client = thread_client(urls, {"Authorization": f"Bearer {token}"})
        stop = threading.Event()
        try:
            for machine in machines:
                machine.start(stop, duration=PERIOD * per_device + 60)
            deadline = time.monotonic() + 20
            while min(m.polls for m in machines) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            jitter = random.Random(seed)
            plan = sorted(
                (n * spread / devices + k * PERIOD + jitter.uniform(0, JITTER), n)
                for n in range(devices)
                for k in range(per_device)
            )

            def vend(index: int) -> tuple[bool, object]:
                machine = machines[plan[index][1]]
                status, body = client().json(
                    "POST", f"/api/v1/vend/{index % 5 + 1}", {"device_id": machine.device_id}
                )
                if status not in (201, 202):
                    return False, f"HTTP {status} {body}"
                txn = body["id"]
                if not witness.wait(txn, SETTLE_TIMEOUT):
                    return False, f"{txn} not confirmed in {SETTLE_TIMEOUT:g} s"
                return witness.confirmed[txn][1] == 200, txn

            load = open_loop(
                vend,
                rate=1.0,
                count=len(plan),
                concurrency=devices * 2,
                max_seconds=PERIOD * per_device + 15,
                offsets=[offset for offset, _ in plan],
            )
        finally:
            stop.set()
            for machine in machines:
                if machine.thread is not None:
                    machine.thread.join(timeout=10)
        settled = stack.sql(
            "SELECT state, count(*) FROM transactions_transaction GROUP BY state ORDER BY state"
        )
    delivered, succeeded = [], []
    for outcome in load.outcomes:
        if outcome.ok:
            delivered.append(witness.delivered[outcome.detail] - outcome.scheduled)
            succeeded.append(witness.confirmed[outcome.detail][0] - outcome.scheduled)
    errors = load.errors
    extra = {"devices": devices}
    rows = [
        make_row(
            "request -> command delivered",
            delivered,
            errors=errors,
            target="",
            **extra,
        ),
        make_row(
            "request -> succeeded",
            succeeded,
            errors=errors,
            target="",
            **extra,
        ),
    ]
    failures = sorted({str(o.detail) for o in load.outcomes if not o.ok})[:3]
    note = (
        f"{len(plan)} vends over {devices} machines "
        f"(2 s poll, 1.3 s motor), {stack.database_label}, 2 workers; states at the end: "
        + ", ".join(f"{state} {count}" for state, count in settled)
        + "".join(f"; failure: {failure}" for failure in failures)
    )
    return rows, note


def run(quick: bool) -> dict:
    rows, note = measure(quick)
    return {"scenario": NAME, "rows": rows, "notes": [note]}
