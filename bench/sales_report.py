"""Sales reports over 1,000,000 transactions: ``GET /api/v1/reports/sales`` per ``group_by``.

A scratch PostgreSQL database (``bench_*``) gets 20 machines of 10 slots (the scratch
stack's seed) and then the transactions in one ``INSERT ... SELECT generate_series`` (about
half a minute, not the ORM row by row): spread evenly over the last 90 days, one slot after
another, 90 % succeeded, 4 % failed, 2 % unconfirmed, 2 % expired, 2 % cancelled. Then
``ANALYZE``, the production web tier (granian as shipped), a staff JWT, and for each
``group_by`` and two periods (the default 7 days, and 45 days, whose previous period makes
the query read 90 days: every row) one warm-up request and ``RUNS`` timed ones, end to end
over HTTP. Target: p50 < 1 s each.

Not part of the default ``make bench`` (the fill alone takes longer than a scenario
should): ``make bench BENCH_ARGS="--only sales_report"`` or
``.venv/bin/python -m bench.sales_report [--rows N]``.
"""

import argparse
import json
import sys
import time
from datetime import date, timedelta

from bench.common import bench_stack, get_token, make_row, services_available
from tests.scratch.net import Client
from tests.scratch.stack import PASSWORD

NAME = "sales_report"
ROWS = 1_000_000
QUICK_ROWS = 100_000
RUNS = 5
LIMIT_MS = 1000.0
GROUPS = ("machine", "product", "slot", "location", "route", "day", "hour")
DEVICES = [f"ESP32_BENCH{n:05d}" for n in range(20)]
SLOTS = 10
STAFF = "bench-staff"

# One row per generated number i: slot i mod <slots>, a state from the round (i div
# <slots>) mod 50, so that every slot sees every state, created_at
# spread evenly over the last 90 days (newest first), prices as the slot's product has them.
FILL = """
WITH slots AS (
    SELECT row_number() OVER (ORDER BY s.id) - 1 AS n, s.id, s.device_id, s.number,
           p.id AS product_id, p.name, p.sku, p.price
    FROM inventory_slot s JOIN inventory_product p ON p.id = s.product_id
), total AS (SELECT count(*) AS k FROM slots)
INSERT INTO transactions_transaction (
    id, device_id, slot_id, slot_number, product_id, product_name, product_sku, price, state,
    failure_reason, idempotency_key, created_at, updated_at
)
SELECT md5(i::text)::uuid, s.device_id, s.id, s.number, s.product_id, s.name, s.sku, s.price,
       CASE WHEN i / total.k %% 50 < 45 THEN 'succeeded'
            WHEN i / total.k %% 50 < 47 THEN 'failed'
            WHEN i / total.k %% 50 = 47 THEN 'unconfirmed'
            WHEN i / total.k %% 50 = 48 THEN 'expired'
            ELSE 'cancelled' END,
       '', '', now() - (i * (90 * 86400.0 / %(rows)s)) * interval '1 second',
       now()
FROM generate_series(1, %(rows)s) AS i, total
JOIN slots s ON true
WHERE s.n = i %% total.k
"""


# Four locations of five machines each; route A visits 1, 2, 3 and route B 3, 4, so one
# location's sales count under both routes (the route report's join fans out there).
PLACES = """
INSERT INTO devices_location (name, address, contact, notes, created_at)
SELECT 'Site ' || n, '', '', '', now() FROM generate_series(1, 4) AS n;
UPDATE devices_device d SET location_id = l.id
FROM devices_location l
WHERE l.name = 'Site ' || (1 + (SELECT count(*) FROM devices_device e WHERE e.id < d.id) / 5);
INSERT INTO devices_route (name, notes, created_at) VALUES ('A', '', now()), ('B', '', now());
INSERT INTO devices_routestop (route_id, location_id, position)
SELECT r.id, l.id, stop.position
FROM (VALUES ('A', 'Site 1', 1), ('A', 'Site 2', 2), ('A', 'Site 3', 3),
             ('B', 'Site 3', 1), ('B', 'Site 4', 2)) AS stop (route, site, position)
JOIN devices_route r ON r.name = stop.route JOIN devices_location l ON l.name = stop.site;
"""


def fill(stack, rows: int) -> float:
    """The transactions, in one statement; seconds taken (ANALYZE included)."""
    import psycopg2

    started = time.monotonic()
    connection = psycopg2.connect(stack.database_url, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(PLACES)
            cursor.execute(FILL, {"rows": rows})
            cursor.execute("ANALYZE")
    finally:
        connection.close()
    return time.monotonic() - started


def periods(today: date) -> dict[str, dict]:
    return {
        "7 days": {},
        "45 days": {"from": str(today - timedelta(days=44)), "to": str(today)},
    }


def time_reports(base_url: str, token: str, runs: int) -> list[dict]:
    client = Client(base_url, timeout=60, headers={"Authorization": f"Bearer {token}"})
    rows = []
    try:
        today = date.today()
        for label, period in periods(today).items():
            for group_by in GROUPS:
                query = "&".join(f"{k}={v}" for k, v in {**period, "group_by": group_by}.items())
                path = f"/api/v1/reports/sales?{query}"
                latencies, errors, groups, vends = [], 0, 0, 0
                for attempt in range(runs + 1):  # the first warms the caches, untimed
                    started = time.perf_counter()
                    status, body = client.json("GET", path)
                    elapsed = time.perf_counter() - started
                    if status != 200:
                        errors += 1
                        continue
                    groups, vends = len(body["rows"]), body["totals"]["vends"]
                    if attempt:
                        latencies.append(elapsed)
                rows.append(
                    make_row(
                        f"{group_by}, {label}",
                        latencies,
                        errors=errors,
                        target="p50 < 1 s",
                        limit_ms=LIMIT_MS,
                        stat="p50",
                        groups=groups,
                        vends=vends,
                    )
                )
    finally:
        client.close()
    return rows


def run(quick: bool, *, rows: int | None = None) -> dict:
    rows = rows or (QUICK_ROWS if quick else ROWS)
    missing = services_available()
    if missing:
        raise RuntimeError(f"needs PostgreSQL and Redis: {missing}")
    with bench_stack({"TIME_ZONE": "UTC"}) as stack:
        stack.seed(devices=DEVICES, stock=[5] * SLOTS)
        stack.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
        stack.run("manage.py", "createsuperuser", "--noinput", "--username", STAFF, "--email", "")
        fill_seconds = fill(stack, rows)
        count = stack.sql("SELECT count(*) FROM transactions_transaction")[0][0]
        base_url = stack.start_web()
        token = get_token(base_url, STAFF)
        result_rows = time_reports(base_url, token, RUNS)
    return {
        "scenario": NAME,
        "rows": result_rows,
        "notes": [
            f"{count:,} transactions over 90 days, {len(DEVICES)} machines x {SLOTS} slots, "
            f"filled in {fill_seconds:.1f} s (INSERT ... SELECT generate_series + ANALYZE)",
            f"p50 of {RUNS} requests after one warm-up, over HTTP (granian as shipped); "
            "'45 days' reads all 90 days (the period and the previous one)",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    args = parser.parse_args(argv)
    result = run(False, rows=args.rows)
    for row in result["rows"]:
        print(
            f"{row['metric']:<20} p50 {row['p50']:8.1f} ms  max {row['max']:8.1f} ms  "
            f"groups {row['groups']:>5}  vends {row['vends']:>8}  met {row['met']}"
        )
    for note in result["notes"]:
        print(note)
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
