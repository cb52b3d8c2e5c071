"""Profile one accepted vend (or its confirmation) through the whole Django stack.

    .venv/bin/python bench/vend_profile.py [--vends 300] [--top 25] [--no-idempotency-key]
    .venv/bin/python bench/vend_profile.py --confirm [--vends 300] [--top 25]

Creates a throwaway test database (SQLite by default; ``DATABASE_URL`` picks PostgreSQL),
one online machine with five slots stocked so they never run out, and a real API key
(``Authorization: Api-Key ...``, the way a kiosk calls). Then it sends ``--vends``
``POST /api/v1/vend/<slot>`` through Django's test client (no network, so the figures are
the server's own cost per vend), each with its own Idempotency-Key as ``bench/vend_api.py``
sends them, three times timed and once under cProfile. Prints µs CPU per vend, the queries
of one vend and the top functions by own and by cumulative time.

The queue TTL, the offline cutoff and the vend throttle are widened through the
environment (as ``bench/vend_api.py`` does with the TTL) so that nothing expires, goes
offline or is throttled while it runs: every vend takes the accepted path. The throttle
still counts each request. Bounded: at most 5 000 vends a round.

``--confirm`` profiles the machine's side instead: ``POST /esp32/confirm`` of a delivered
vend (``success: true``), as the v2.1 firmware sends it. The vends it confirms are requested
and delivered beforehand through the services (not timed), one per confirmation.
"""

import argparse
import os
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.profiling import print_top, profiled, timed_rounds

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("VEND_QUEUE_TTL", "86400")
os.environ.setdefault("DEVICE_OFFLINE_AFTER", "86400")
os.environ.setdefault("API_THROTTLE_VEND", "1000000/min")
os.environ.setdefault("DEVICE_ADDRESS_THROTTLE", "1000000/min")

DEVICE_ID = "ESP32_BE0C40000001"
SLOTS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vends", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--no-idempotency-key", action="store_true", help="send no Idempotency-Key header"
    )
    parser.add_argument(
        "--confirm", action="store_true", help="profile POST /esp32/confirm instead"
    )
    args = parser.parse_args()
    vends = max(1, min(args.vends, 5000))

    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment
    from django.utils import timezone
    from rest_framework_api_key.models import APIKey

    from devices.models import Device
    from inventory.models import Product, Slot

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        device = Device.objects.create(
            device_id=DEVICE_ID,
            slot_count=SLOTS,
            last_seen=timezone.now(),
            is_active=True,
            bound_address="127.0.0.1",  # the test client's address: its confirmations are served
        )
        plenty = 5 * vends + 100  # four rounds and the warm-up, with room to spare
        for number in range(1, SLOTS + 1):
            product = Product.objects.create(name=f"Snack {number}", sku=f"S-{number}", price=1)
            Slot.objects.create(
                device=device, number=number, product=product, quantity=plenty, capacity=plenty
            )
        _key, secret = APIKey.objects.create_key(name="vend-profile")
        client = Client(HTTP_AUTHORIZATION=f"Api-Key {secret}")
        turn = iter(range(10**9))

        def one_vend():
            i = next(turn)
            headers = {} if args.no_idempotency_key else {"Idempotency-Key": f"profile-{i}"}
            response = client.post(
                f"/api/v1/vend/{i % SLOTS + 1}",
                {"device_id": DEVICE_ID},
                content_type="application/json",
                headers=headers,
            )
            assert response.status_code == 202, (response.status_code, response.content[:200])
            return response

        for _ in range(20):  # warm up: imports, URL resolver, the key's service user
            one_vend()
        action, what = one_vend, "vend"
        if args.confirm:
            action, what = _confirmations(device, vends), "confirm"
            for _ in range(20):  # warm up the confirmation's own path
                action()
        with CaptureQueriesContext(connection) as captured:
            action()
        print(f"database: {connection.vendor}; queries in one {what}: {len(captured)}")
        for query in captured.captured_queries:
            print(f"  {query['sql'][:150]}")

        timed_rounds(action, vends, what)

        profiler = profiled(action, vends, what)
        stats = pstats.Stats(profiler)
        by_package: dict[str, float] = {}
        for (filename, _line, _function), row in stats.stats.items():
            package = _package(filename)
            by_package[package] = by_package.get(package, 0.0) + row[2]
        print("--- own time by package (share of the profiled time) ---")
        for package, own in sorted(by_package.items(), key=lambda item: -item[1])[:15]:
            print(f"  {own / stats.total_tt:6.1%}  {package}")
        print_top(profiler, args.top)
    finally:
        from devices import presence

        presence.buffer.stop()  # its thread's connection would keep the database from dropping
        connection.creation.destroy_test_db(old_name, verbosity=0)


def _confirmations(device, vends: int):
    """A function that confirms one delivered vend through ``POST /esp32/confirm``, after
    requesting and delivering (through the services) one vend for each call it will get."""
    from django.test import Client

    from transactions.delivery import claim_next_command
    from transactions.services import request_vend

    calls = 4 * vends + 21  # the warm-up, the query capture, three timed rounds, the profile
    for i in range(calls):
        request_vend(device=device, slot_number=i % SLOTS + 1)
        assert claim_next_command(device=device) is not None
    client = Client()
    turn = iter(range(calls))

    def one_confirm():
        slot = next(turn) % SLOTS + 1
        response = client.post(
            "/esp32/confirm",
            {"device_id": DEVICE_ID, "slot": slot, "success": True, "message": "dispensed"},
            content_type="application/json",
        )
        assert response.status_code == 200, (response.status_code, response.content[:200])
        assert response.json()["status"] == "ok", response.content[:200]
        return response

    return one_confirm


def _package(filename: str) -> str:
    """``django/db``, ``rest_framework``, ``transactions`` ... for a profiled function's file."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C: I/O, locks, hashing ...)"
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return "/".join(rest[:2]) if rest[0] == "django" and len(rest) > 2 else rest[0]
    root = Path(__file__).resolve().parent.parent
    try:
        return path.resolve().relative_to(root).parts[0]
    except ValueError:
        return "python stdlib"


if __name__ == "__main__":
    main()
