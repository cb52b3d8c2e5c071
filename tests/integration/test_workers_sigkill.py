"""A granian worker SIGKILLed mid-burst: every vend is delivered once and only once.

The production web server without nginx: granian's main process (``deploy/web.py``, as every
production launcher runs it) with 4 WSGI workers of 4 threads, the sweeper, the
discovery listener and the serial bridge (no ports), on a throwaway PostgreSQL database and
a private Redis database (whatever database the rest of the suite uses, so this runs in both
CI passes). 20 simulated WiFi machines poll it (four of them have a twin board polling at
the same time, see ``fleet()``); 50 client threads fire 500 vends, each with its own
Idempotency-Key, retrying with the SAME key after a connection error. After about half the
vends were accepted one worker process is SIGKILLed: the requests it was serving die with
their connections (and their database transactions), granian forks a new worker, and
the kernel hands new connections to the survivors meanwhile.

Then, once nothing is queued or sent, the machines' own records (the witness) and the
database are compared: nothing dispensed twice or without a request, every accepted vend
settled, no vend lost, the stock of every slot explained by its vends and its ledger.

Some slots hold fewer units than the vends aimed at them, so out-of-stock 409s happen too.
Decisions: short timeouts via the environment (``IDEMPOTENCY_LOCK_TIMEOUT=3``,
``VEND_CONFIRM_TIMEOUT=3``) and a fast simulated motor (50 ms) keep the whole run near a
minute on two cores (migrating the scratch database is a third of it); rate limits are lifted
for the one kiosk user that fires every vend; nginx is not used: clients and machines
talk to granian's port, which stays open while a worker dies (the main process holds the
listening socket; the workers share it). One kill only: granian exits when a worker dies
again within 5.5 s of being replaced (a crash loop).
"""

import http.client
import itertools
import json
import os
import secrets
import signal
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devices.simulators.wifi_firmware import WifiFirmware, device_id_for, mac_for
from tests import accounting
from tests.scratch import databases
from tests.scratch.net import free_port, reachable, request, wait_for, wait_http
from tests.scratch.stack import Stack, web_argv

WORKERS = 4  # granian worker processes
THREADS = 4  # threads per worker
DEVICES = 20
VENDS = 500
CLIENTS = 50
KILL_AFTER_ACCEPTED = 250
TWINS = 4  # machines polled by two boards at once (see fleet())
# Units per slot 1..5; each (device, slot) gets VENDS / (DEVICES * 5) = 5 vends, so slot 4
# runs out exactly and slot 5 refuses three of its five.
STOCK = [6, 6, 6, 5, 2]
KEPT = {"succeeded", "unconfirmed"}
REFUNDED = {"failed", "expired", "cancelled"}
SETTLED = KEPT | REFUNDED
PASSWORD = "sigkill-password-1"
# Redis database 9: the events-consumer tests use 3, a developer's server usually 0.
# SCRATCH_REDIS_URL and SCRATCH_DATABASE_PREFIX: engineers sharing one server tell theirs apart.
REDIS_URL = os.environ.get("SCRATCH_REDIS_URL") or databases.redis_url(9)
DATABASE_PREFIX = os.environ.get("SCRATCH_DATABASE_PREFIX", "vending_sigkill") + "_"
VEND_DEADLINE = 25.0  # seconds one client spends on one vend, retries included


@pytest.fixture
def scratch(tmp_path):
    """The throwaway database and the private Redis database, removed afterwards."""
    if not reachable(5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    if not reachable(6379) or not databases.redis_usable(REDIS_URL):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    name = databases.create_database(DATABASE_PREFIX)
    databases.flush_redis(REDIS_URL)
    try:
        yield databases.database_url(name)
    finally:
        databases.drop_database(name)
        databases.flush_redis(REDIS_URL)


@pytest.fixture
def stack(scratch, tmp_path):
    """Migrated database, seeded machines and stock, and every process running."""
    stack = Stack(
        {
            "DATABASE_URL": scratch,
            "REDIS_URL": REDIS_URL,
            "DATA_DIR": str(tmp_path),
            # Not the suite's metrics files (settings exported the shared directory).
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "IDEMPOTENCY_LOCK_TIMEOUT": "3",
            "VEND_CONFIRM_TIMEOUT": "3",
            "VEND_QUEUE_TTL": "30",
            "DEVICE_OFFLINE_AFTER": "10",
            "LOG_LEVEL": "WARNING",
            # One kiosk user fires all 500 vends; rate limits are not what is tested here.
            "API_THROTTLE_VEND": "100000/min",
            "API_THROTTLE_USER": "100000/min",
            "DEVICE_THROTTLE": "100000/min",
            "WEB_WORKERS": str(WORKERS),
            "WEB_THREADS": str(THREADS),
            # No recycling on memory during the run: the SIGKILL is the only worker replaced.
            "WEB_MAX_RSS_MB": "0",
            # 500 vends and thousands of polls would only fill the log.
            "WEB_ACCESS_LOG": "false",
        },
        tmp_path,
    )
    seed = secrets.randbelow(0xFFFF)
    device_ids = [device_id_for(mac_for(index, seed)) for index in range(1, DEVICES + 1)]
    try:
        setup = stack.seed(device_ids, STOCK, "kiosk", PASSWORD)
        port = free_port()
        stack.start_argv("web", web_argv(f"127.0.0.1:{port}"))
        url = f"http://127.0.0.1:{port}"
        stack.start("sweeper", "sweep_commands", "--every", "0.5")
        stack.start(
            "discovery", "run_discovery", "--host", "127.0.0.1", "--port", str(free_port(2))
        )
        stack.start("bridge", "run_serial_bridge")
        try:
            wait_http(f"{url}/health", timeout=60, process=stack.children["web"])
            wait_for(lambda: len(workers_of(stack.children["web"])) == WORKERS, 60, "workers")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{stack.output('web')[-3000:]}") from None
        yield {
            "stack": stack,
            "database": scratch,
            "url": url,
            "seed": seed,
            "devices": device_ids,
            **setup,
        }
    finally:
        codes = stack.close(timeout=30)  # deploy/web.py gives its workers 20 s
        print(f"exit codes: {codes}")
    # granian's main process outlived its worker and stopped cleanly (0: no crash loop).
    bad = {name: code for name, code in codes.items() if code != 0}
    assert not bad, "\n".join(
        f"{name} exited {code}:\n{stack.output(name)[-3000:]}" for name, code in bad.items()
    )


def workers_of(server) -> list[int]:
    """Pids of granian's worker processes: the children of its main process."""
    import psutil

    try:
        return sorted(child.pid for child in psutil.Process(server.pid).children())
    except psutil.NoSuchProcess:
        return []


class Clients:
    """The kiosk side: vends with Idempotency-Keys; a connection that dies is retried with
    the same key."""

    def __init__(self, url: str, token: str, accepted_enough: threading.Event) -> None:
        self.url = url
        self.token = token
        self.accepted_enough = accepted_enough
        self.lock = threading.Lock()
        self.accepted = 0
        self.retries = 0
        self.in_use = 0

    def vend(self, n: int, device_id: str, slot: int) -> dict:
        key = f"sigkill-{n}-{secrets.token_hex(4)}"
        record = {"n": n, "key": key, "device": device_id, "slot": slot, "attempts": 0}
        deadline = time.monotonic() + VEND_DEADLINE
        while time.monotonic() < deadline and record["attempts"] < 60:
            record["attempts"] += 1
            try:
                status, headers, body = request(
                    self.url,
                    "POST",
                    f"/api/v1/vend/{slot}",
                    {"device_id": device_id},
                    {"Authorization": f"Bearer {self.token}", "Idempotency-Key": key},
                )
            except (OSError, http.client.HTTPException):
                # The worker died mid-request: again (another worker takes it), SAME key.
                with self.lock:
                    self.retries += 1
                time.sleep(0.05)
                continue
            code = (body or {}).get("code") if isinstance(body, dict) else None
            if status == 409 and code == "idempotency_key_in_use":
                # The first holder may have died mid-request; its lock times out (3 s).
                with self.lock:
                    self.in_use += 1
                time.sleep(0.3)
                continue
            record.update(status=status, code=code, body=body)
            record["replayed"] = headers.get("Idempotent-Replayed") == "true"
            if status in (200, 202):
                record["txn"] = body["id"]
                with self.lock:
                    self.accepted += 1
                    if self.accepted >= KILL_AFTER_ACCEPTED:
                        self.accepted_enough.set()
            return record
        record.update(status=None, code="gave up")
        return record


def fleet(url: str, seed: int) -> list[WifiFirmware]:
    """The machines, all polling granian's one port (the kernel spreads the connections
    over the workers).

    The first ``TWINS`` machines have a twin: a second board with the same id (a swapped
    board still powered, a cloned flash). The firmware never overlaps its own polls, so only
    twins make two threads claim commands of one machine at the same moment - the race the
    conditional claim exists for.
    """
    devices = []
    for index in [*range(1, DEVICES + 1), *range(1, TWINS + 1)]:
        devices.append(
            WifiFirmware(
                index=index,
                seed=seed,
                server_url=url,
                poll_interval=0.3,
                vend_seconds=0.05,
                after_confirm=0.05,
                http_timeout=5.0,
            )
        )
    return devices


class _IdleServer(BaseHTTPRequestHandler):
    """Answers every poll with "no command", counting them."""

    polls = 0

    def do_GET(self):
        type(self).polls += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.do_GET()

    def log_message(self, *args):
        pass


def test_a_machine_whose_server_refuses_connections_fails_over_and_stays_there():
    """The simulator's ``--failover``: it moves to the next server (only) when the connection
    is refused, and keeps using the one that answered."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IdleServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    live = f"http://127.0.0.1:{server.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    device = WifiFirmware(server_url=dead, failover_urls=(live,), poll_interval=0.01, max_polls=3)
    try:
        device.run(threading.Event(), duration=5)
    finally:
        server.shutdown()
        server.server_close()
    assert device.base_url == live
    assert device.registered
    assert _IdleServer.polls == 1 + 3  # the registration, then every poll at the live server
    assert "refused" in device.last_error or device.errors == 1


def test_a_worker_killed_mid_burst_loses_and_duplicates_no_vend(stack):
    url, started = stack["url"], time.monotonic()
    server = stack["stack"].children["web"]
    status, _, body = request(
        url, "POST", "/api/v1/auth/token/", {"username": "kiosk", "password": PASSWORD}
    )
    assert status == 200, body
    devices = fleet(url, stack["seed"])
    assert [d.device_id for d in devices[:DEVICES]] == stack["devices"]
    stop_devices = threading.Event()
    try:
        for device in devices:
            device.start(stop_devices)
        wait_for(lambda: all(d.polls >= 1 and d.registered for d in devices), 20, "first polls")

        accepted_enough = threading.Event()
        clients = Clients(url, body["access"], accepted_enough)
        plan = [
            (n, devices[n % DEVICES].device_id, (n // DEVICES) % len(STOCK) + 1)
            for n in range(VENDS)
        ]
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            futures = [pool.submit(clients.vend, *job) for job in plan]
            if not accepted_enough.wait(60):
                pool.shutdown(cancel_futures=True)
                done = [f.result() for f in futures if f.done() and not f.cancelled()]
                outcomes = Counter((r["status"], r["code"]) for r in done)
                raise AssertionError(f"only {clients.accepted} vends accepted: {outcomes}")
            before = workers_of(server)
            assert len(before) == WORKERS, before
            victim = before[1]
            os.kill(victim, signal.SIGKILL)
            accepted_at_kill = clients.accepted
            records = [future.result(timeout=VEND_DEADLINE + 15) for future in futures]

        # granian's main process reaped the dead worker and forked a new one in its place.
        def replaced() -> list[int] | None:
            pids = workers_of(server)
            return pids if len(pids) == WORKERS and victim not in pids else None

        after = wait_for(replaced, 30, "the replacement worker")
        assert victim not in after and len(set(after) - set(before)) == 1, (before, after)
        assert server.poll() is None, "granian's main process died with its worker"
        # At LOG_LEVEL=WARNING granian logs the death (an error), not the respawn.
        assert "Unexpected exit from worker-" in stack["stack"].output("web")

        fired = time.monotonic()
        for _ in range(180):  # 45 s at most
            if databases.count_open_vends(stack["database"]) == 0:
                break
            time.sleep(0.25)
        else:
            raise AssertionError("vends still queued or sent 45 s after the burst")
        settled = time.monotonic()
    finally:
        stop_devices.set()
        for device in devices:
            if device.thread is not None:
                device.thread.join(timeout=5)
    stack["stack"].run("manage.py", "sweep_commands")
    report = snapshot(stack)
    print(
        f"\nfiring took {fired - started:.1f} s, settling {settled - fired:.1f} s, "
        f"the final sweep and report {time.monotonic() - settled:.1f} s"
    )
    check(records, devices, report, clients, accepted_at_kill, fired - started)


def snapshot(stack) -> dict:
    arguments = json.dumps({"ledger_after_setup": stack["ledger_after_setup"]})
    return json.loads(stack["stack"].run("-m", "tests.scratch.seed", "report", arguments))


def check(records, devices, report, clients, accepted_at_kill, duration) -> None:
    txns, commands = report["transactions"], report["commands"]
    accepted = [r for r in records if r["status"] in (200, 202)]
    states = Counter(t["state"] for t in txns.values())
    outcomes = Counter((r["status"], r["code"]) for r in records)
    witnessed = [
        entry
        for device in devices
        for entry in device.commands()
        if entry["command"] == "VEND" and entry["acted"]
    ]
    print(
        f"\n{VENDS} vends in {duration:.1f} s: {len(accepted)} accepted "
        f"({accepted_at_kill} before the SIGKILL), outcomes {dict(outcomes)}, "
        f"{clients.retries} connection-error retries, {clients.in_use} in-use 409s, "
        f"{sum(r['replayed'] for r in accepted)} replays; states {dict(states)}; "
        f"{len(witnessed)} dispensed; machines' errors {sum(d.errors for d in devices)}"
    )

    # The machines' own records against what the clients were told: lost, duplicated and
    # unexpected vends (tests/accounting.py), each 0.
    counted = accounting.count_outcomes(
        [
            accounting.Vend(
                transaction_id=txn_id,
                device_id=txns[txn_id]["device"] if txn_id in txns else "?",
                slot=txns[txn_id]["slot_number"] if txn_id in txns else 0,
                state=txns[txn_id]["state"] if txn_id in txns else None,
            )
            for txn_id in (r["txn"] for r in accepted)
        ],
        accounting.wifi_dispenses(devices),
    )
    print(counted.line())
    counted.check()

    # Every request got an answer that means something: no 5xx, no client gave up.
    unexpected = [
        r for r in records if not (r["status"] in (200, 202) or (r["status"] == 409 and r["code"]))
    ]
    assert not unexpected, unexpected[:5]
    assert outcomes.get((409, "out_of_stock"), 0) > 0, "the short slots never ran out"
    assert accepted_at_kill >= KILL_AFTER_ACCEPTED and accepted_at_kill < len(accepted), (
        "the worker was not killed in the middle of the burst"
    )

    # One vend per key; the database holds exactly the accepted vends.
    by_key = {r["key"]: r["txn"] for r in accepted}
    assert len(set(by_key.values())) == len(accepted), "two keys answered with one vend"
    assert set(txns) == set(by_key.values()), (
        f"vends nobody was told about: {sorted(set(txns) - set(by_key.values()))[:5]}; "
        f"accepted but missing: {sorted(set(by_key.values()) - set(txns))[:5]}"
    )
    for key, txn_id in by_key.items():
        assert txns[txn_id]["idempotency_key"] == key

    # The witness: nothing dispensed twice, nothing dispensed that was not requested.
    command_ids = [entry["command_id"] for entry in witnessed]
    twice = [c for c, count in Counter(command_ids).items() if count > 1]
    assert not twice, f"commands dispensed twice: {twice}"
    txn_ids = [entry["transaction_id"] for entry in witnessed]
    assert len(set(txn_ids)) == len(txn_ids), "a vend was dispensed twice"
    for entry in witnessed:
        command = commands.get(str(entry["command_id"]))
        assert command is not None, f"dispensed an unknown command: {entry}"
        assert command["transaction_id"] == entry["transaction_id"] in txns, entry
        txn = txns[entry["transaction_id"]]
        assert (txn["device"], txn["slot_number"]) == (entry["device_id"], entry["slot"])
        assert txn["state"] in KEPT, f"dispensed but refunded: {txn}"

    # Every accepted vend is settled: final or unconfirmed; none lost in queued/sent.
    lost = [t for t in txns.values() if t["state"] not in SETTLED]
    assert not lost, f"vends neither delivered nor expired: {lost[:5]}"
    # Per machine and slot, sales match what the machine did: each dispense is a kept vend,
    # and nothing succeeded that the machine did not dispense.
    dispensed = Counter((e["device_id"], e["slot"]) for e in witnessed)
    kept, succeeded = Counter(), Counter()
    for txn in txns.values():
        where = (txn["device"], txn["slot_number"])
        kept[where] += txn["state"] in KEPT
        succeeded[where] += txn["state"] == "succeeded"
    for where in set(dispensed) | set(kept):
        assert succeeded[where] <= dispensed[where] <= kept[where], (
            f"{where}: {dispensed[where]} dispensed, {succeeded[where]} succeeded, "
            f"{kept[where]} kept"
        )

    # Every state change has its event, in order, ending at the current state.
    for txn_id, txn in txns.items():
        chain = report["events"].get(txn_id, [])
        assert chain and chain[0] == ["", "queued"], (txn_id, chain)
        for (_, reached), (left, _) in itertools.pairwise(chain):
            assert reached == left, (txn_id, chain)
        assert chain[-1][1] == txn["state"], (txn_id, chain)
        ledger = sorted(report["txn_ledger"].get(txn_id, []))
        assert ledger == ([-1, 1] if txn["state"] in REFUNDED else [-1]), (txn, ledger)

    # Stock: explained by the vends, and by the ledger.
    accounting.check_stock(report["accounting"])
    start = dict(enumerate(STOCK, start=1))
    held = defaultdict(int)
    for txn in txns.values():
        held[(txn["device"], txn["slot_number"])] += txn["state"] in KEPT | {"queued", "sent"}
    slots = [s for s in report["slots"] if s["device"] in {d.device_id for d in devices}]
    assert len(slots) == DEVICES * len(STOCK)
    for slot in slots:
        where = (slot["device"], slot["number"])
        assert start[slot["number"]] - held[where] == slot["quantity"], (slot, held[where])
        assert start[slot["number"]] + slot["ledger"] == slot["quantity"], slot
