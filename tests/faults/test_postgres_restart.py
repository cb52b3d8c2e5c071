"""PostgreSQL restarted for real, under load, behind the granian web tier.

A cluster of the test's own (``tests/faults/pg_cluster.py``: initdb, a free loopback port,
trust auth), migrated and seeded; the production web tier (granian WSGI as
``deploy/web.py`` runs it, 2 workers x 8 threads, ``CONN_MAX_AGE=60``) and the sweeper run
against it. Three simulated machines poll and confirm and two kiosks vend to them with
Idempotency-Keys (the load of ``test_backend_faults.py``), while ``pg_ctl restart -m fast``
and then ``-m immediate`` (every server process killed, crash recovery) run mid-load.

For every request: an answer within ``BOUND`` seconds (no hang), and never a 5xx other than
503 with ``Retry-After`` naming the database; polls answer 200 again within 10 s of
PostgreSQL accepting connections. Then the kiosks stop, the machines empty the queues, and
the accounting (``tests/accounting.py``): every slot's stock explained by its vends and by
its ledger, every vend a kiosk was told was accepted exists and none it was not told about,
and from the machines' own records nothing lost, dispensed twice or unexpected.
"""

import json
import time
from collections import Counter

import psycopg2
import pytest

from bench.common import BASE_ENV
from tests import accounting
from tests.faults import pg_cluster
from tests.faults.test_backend_faults import RECOVERY, Load, check_answers, request
from tests.scratch import databases
from tests.scratch.stack import Stack

pytestmark = pytest.mark.postgres

DEVICES = [f"ESP32_50A4000000{n:02X}" for n in range(1, 4)]
PASSWORD = "restart-password-1"
DATABASE = "soak_restart"
SETTLE = 30.0  # seconds for the machines and the sweeper to settle the last vends


def _query(url: str, sql: str):
    connection = psycopg2.connect(url, connect_timeout=3)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]
    finally:
        connection.close()


@pytest.fixture(scope="module")
def restart_stack():
    reason = pg_cluster.unavailable()
    if reason:
        pytest.skip(reason)
    with pg_cluster.Cluster() as cluster:
        admin = psycopg2.connect(cluster.url(), connect_timeout=5)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{DATABASE}"')
        admin.close()
        stack = Stack(
            dict(
                BASE_ENV,
                DATABASE_URL=cluster.url(DATABASE),
                DATABASE_CONNECT_TIMEOUT="2",
                DATABASE_STATEMENT_TIMEOUT="2",
                OUTAGE_RETRY_AFTER="2",
                IDEMPOTENCY_LOCK_TIMEOUT="3",
                DEVICE_OFFLINE_AFTER="60",
                VEND_QUEUE_TTL="120",
                VEND_CONFIRM_TIMEOUT="15",
                CONN_MAX_AGE="60",
            )
        )
        try:
            # Migrate and seed as a child with the web tier's own environment.
            setup = stack.seed(DEVICES, [60] * 5, "kiosk", PASSWORD)
            url = stack.start_web("granian")
            sweeper = stack.start("sweeper", "sweep_commands", "--every", "1")
            status, _, body = request(
                url, "POST", "/api/v1/auth/token/", {"username": "kiosk", "password": PASSWORD}
            )
            assert status == 200, body
            yield {
                "cluster": cluster,
                "url": url,
                "token": body["access"],
                "helper": stack,
                "web": stack.children["granian"],
                "sweeper": sweeper,
                "ledger_after_setup": setup["ledger_after_setup"],
            }
        finally:
            stack.close()  # granian's main process and workers, the sweeper (bounded)


def restart_under_load(cluster, load: Load, mode: str) -> dict:
    """``pg_ctl restart -m <mode>`` while the load runs; waits (bounded) for a poll
    answered 200 after the server is back. The answers are judged after the load stops,
    when every request has ended."""
    before = _query(cluster.url(), "SELECT pg_postmaster_start_time()")
    began = time.monotonic()
    cluster.restart(mode)
    back = time.monotonic()  # pg_ctl -w: accepting connections again
    for _ in range(int(RECOVERY * 20) + 40):  # RECOVERY + 2 s at most
        if any(r[0] == "poll" and r[3] == 200 and r[1] + r[2] > back for r in load.since(back)):
            break
        time.sleep(0.05)
    after = _query(cluster.url(), "SELECT pg_postmaster_start_time()")
    return {"mode": mode, "began": began, "back": back, "restarted": after > before}


def judged(restart: dict, records: list[tuple]) -> dict:
    """The shape ``check_answers`` takes: requests running at some moment from the restart's
    start until recovery, and the time from the server being back to the first 200 poll."""
    began, back = restart["began"], restart["back"]
    window = [r for r in records if r[1] + r[2] >= began and r[1] <= back + RECOVERY]
    polls_ok = [
        r[1] + r[2] for r in records if r[0] == "poll" and r[3] == 200 and r[1] + r[2] > back
    ]
    outcome = {
        "fault": f"pg_ctl restart -m {restart['mode']}",
        "outage": round(back - began, 2),
        "requests": len(window),
        "statuses": dict(Counter((r[0], r[3]) for r in window)),
        "recovery": round(min(polls_ok) - back, 2) if polls_ok else None,
        "slowest": round(max((r[2] for r in window), default=0), 2),
        "records": window,
    }
    print(f"\n{ {k: v for k, v in outcome.items() if k != 'records'} }")
    return outcome


def test_postgres_restarted_under_load_answers_503_never_hangs_and_loses_nothing(restart_stack):
    s = restart_stack
    cluster = s["cluster"]
    restarts = []
    load = Load(s["url"], s["token"], devices=DEVICES, kiosks=2)
    with load:
        time.sleep(2.0)  # calm weather first
        assert any(r[0] == "vend" and r[3] == 202 for r in load.since(0)), load.since(0)[-5:]
        for mode in ("fast", "immediate"):
            restarts.append(restart_under_load(cluster, load, mode))
            time.sleep(1.0)
        load.drain.set()  # kiosks stop; machines go on until the queues are empty
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            if not databases.count_open_vends(cluster.url(DATABASE)):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a confirmation in flight lands

    for restart in restarts:
        assert restart["restarted"], f"{restart['mode']}: the server did not restart"
        outcome = judged(restart, load.records)
        check_answers(outcome)
        # The outage was seen (and answered as one), so the checks above had work to do.
        assert any(status == 503 for _kind, status in outcome["statuses"]), outcome["statuses"]
    assert s["web"].poll() is None, "granian's main process died"
    assert s["sweeper"].poll() is None, s["helper"].output("sweeper")[-3000:]

    # The accounting: stock, the server's vends against the kiosks', the machines' records.
    assert not load.given_up, f"vends never settled: {load.given_up}"
    report = json.loads(
        s["helper"].run(
            "-m",
            "tests.scratch.seed",
            "report",
            json.dumps({"ledger_after_setup": s["ledger_after_setup"]}),
        )
    )
    accounting.check_stock(report["accounting"])
    stored = report["transactions"]
    accepted = set(load.accepted.values())
    assert accepted, "no vend was accepted"
    assert accepted <= set(stored), f"accepted but missing: {sorted(accepted - set(stored))}"
    assert set(stored) <= accepted, f"vended unannounced: {sorted(set(stored) - accepted)}"
    for key, txn_id in load.accepted.items():
        assert stored[txn_id]["idempotency_key"] == key
    vends = [
        accounting.Vend(
            txn_id, stored[txn_id]["device"], stored[txn_id]["slot_number"], stored[txn_id]["state"]
        )
        for txn_id in accepted
    ]
    dispensed = [accounting.Dispense(d, slot, txn) for d, slot, txn in load.dispensed]
    outcomes = accounting.count_outcomes(vends, dispensed)
    print(outcomes.line())
    outcomes.check()  # lost, duplicated, unexpected, dispensed but refunded: each 0
    assert outcomes.dispensed == len(dispensed) > 0
