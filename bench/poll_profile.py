"""Profile the idle device poll through the whole Django stack (middleware, DRF, service).

    .venv/bin/python bench/poll_profile.py [--polls 2000] [--top 25] [--documented]

Creates a throwaway test database (SQLite by default; ``DATABASE_URL`` picks PostgreSQL),
``--devices`` known online devices with nothing queued, each at its own address (so the
throttles keep the per-device history a real fleet has), then runs ``--polls`` idle polls,
round-robin over the devices, straight into the WSGI application (what granian calls; no
network and no test client, so the figures are the server's own cost per poll), once timed
and once under cProfile, with persistent database connections as ``deploy/web.py`` runs
them (``CONN_MAX_AGE=60``). Prints µs per poll, the queries of one poll, and the top functions by
own time and by cumulative time. Bounded: at most 20 000 polls.
"""

import argparse
import io
import os
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.profiling import print_top, profiled, timed_rounds

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# As deploy/web.py runs it: persistent connections (a connect per poll would dwarf the poll).
os.environ.setdefault("CONN_MAX_AGE", "60")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--documented", action="store_true", help="GET /esp32/wifi/command")
    args = parser.parse_args()
    polls = max(1, min(args.polls, 20_000))

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from devices.models import Device

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        count = max(1, min(args.devices, 1000))

        def address(i: int) -> str:
            return f"10.0.{i // 250}.{i % 250 + 1}"

        macs = [f"02:00:00:00:{i // 256:02X}:{i % 256:02X}" for i in range(count)]
        Device.objects.bulk_create(
            Device(
                device_id="ESP32_" + mac.replace(":", ""),
                last_seen=timezone.now(),
                bound_address=address(i),  # approved machines, each at its own address
            )
            for i, mac in enumerate(macs)
        )
        from vending_site.wsgi import application as handler  # what granian calls

        turn = iter(range(10**9))
        statuses = []

        def start_response(status, headers, exc_info=None):
            statuses.append(status)

        def one_poll() -> str:
            i = next(turn) % count
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": f"/esp32/commands/ESP32_{macs[i].replace(':', '')}",
                "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "5000",
                "HTTP_HOST": "127.0.0.1:5000",
                "REMOTE_ADDR": address(i),
                "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": sys.stderr,
            }
            if args.documented:
                environ["PATH_INFO"] = "/esp32/wifi/command"
                environ["HTTP_DEVICE_ID"] = macs[i]
            response = handler(environ, start_response)
            b"".join(response)
            if hasattr(response, "close"):  # a list of bytes (answered from memory) has none
                response.close()
            return statuses.pop()

        for _ in range(count):  # warm up: imports, URL resolver, caches
            assert one_poll() == "200 OK"
        with CaptureQueriesContext(connection) as captured:
            one_poll()
        print(f"database: {connection.vendor}; queries in one idle poll: {len(captured)}")
        for query in captured.captured_queries:
            print(f"  {query['sql'][:160]}...")

        def _checked_poll() -> None:
            assert one_poll() == "200 OK"

        timed_rounds(_checked_poll, polls, "idle poll")

        profiler = profiled(one_poll, polls, "poll")
        stats = pstats.Stats(profiler)
        for name in ("device_for_poll", "poll"):
            for (filename, _line, function), row in stats.stats.items():
                if function == name and filename.endswith(("selectors.py", "services.py")):
                    print(f"  {function}: {row[3] / stats.total_tt:.0%} of the profiled time")
        print_top(profiler, args.top)
    finally:
        from devices import presence

        presence.buffer.stop()  # its thread's connection would keep the database from dropping
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
