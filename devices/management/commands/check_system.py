"""``manage.py check_system``: check every part of the install and say what to fix."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.system_checks import CHECK_NAMES, Status, default_web_url, run_checks


class Command(BaseCommand):
    help = (
        "Check the database, migrations, channel layer, USB serial ports, the discovery "
        "responder and the web server (both asked on this host's loopback) and whether any "
        "device is online. Prints a table with a hint per problem; exits non-zero when a "
        "check fails (warnings alone exit 0)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--discovery-port",
            type=int,
            default=settings.DISCOVERY_PORT,
            help="UDP port of run_discovery, asked on 127.0.0.1 (default DISCOVERY_PORT).",
        )
        parser.add_argument(
            "--web-url",
            default=None,
            help="The server's health URL (default http://127.0.0.1:PORT/health).",
        )
        parser.add_argument(
            "--skip",
            action="append",
            default=[],
            choices=CHECK_NAMES,
            metavar="NAME",
            help=f"Leave a check out (repeatable): {', '.join(CHECK_NAMES)}.",
        )
        parser.add_argument(
            "--format", dest="output_format", choices=("table", "json"), default="table"
        )

    def handle(self, *args, discovery_port, web_url, skip, output_format, **options):
        if not 1 <= discovery_port <= 65535:
            raise CommandError("--discovery-port must be between 1 and 65535")
        web_url = web_url or default_web_url()
        if not web_url.startswith(("http://", "https://")):
            raise CommandError("--web-url must be an http:// or https:// URL")

        results = run_checks(discovery_port=discovery_port, web_url=web_url, skip=skip)
        failed = [r.name for r in results if r.status == Status.FAIL]

        if output_format == "json":
            report = {
                "ok": not failed,
                "checks": [r.as_dict() for r in results],
                "skipped": [name for name in CHECK_NAMES if name in skip],
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.write_table(results, skip)
        if failed:
            raise CommandError(f"{len(failed)} check(s) failed: {', '.join(failed)}")

    def write_table(self, results, skip) -> None:
        styles = {
            Status.PASS: self.style.SUCCESS,
            Status.WARN: self.style.WARNING,
            Status.FAIL: self.style.ERROR,
        }
        width = max([len("CHECK"), *(len(r.name) for r in results)])
        self.stdout.write(f"{'CHECK':<{width}}  STATUS  DETAIL")
        for r in results:
            status = styles[r.status](f"{r.status.upper():<6}")
            self.stdout.write(f"{r.name:<{width}}  {status}  {r.detail}")
        hints = [r for r in results if r.status != Status.PASS and r.hint]
        if hints:
            self.stdout.write("")
        for r in hints:
            self.stdout.write(f"hint ({r.name}): {r.hint}")
        if skip:
            self.stdout.write(f"skipped: {', '.join(n for n in CHECK_NAMES if n in skip)}")
