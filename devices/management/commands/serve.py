"""``manage.py serve``: run the ASGI application under Daphne on HOST:PORT."""

import os
import sys

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections


class Command(BaseCommand):
    help = "Serve HTTP (and WebSockets) with Daphne on HOST:PORT (default 0.0.0.0:5000)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument(
            "--access-log", default="-", help="File for the access log; - is stdout."
        )

    def handle(self, *args, host: str, port: int, access_log: str, **options):
        self.stdout.write(f"Serving on http://{host}:{port}/ (admin at /admin/)")
        self.stdout.flush()
        argv = ["-b", host, "-p", str(port), "--access-log", access_log]
        argv.append("vending_site.asgi:application")
        CommandLineInterface().run(argv)
        # Daphne has stopped and closed its connections. Leave now, without the interpreter's
        # final garbage collection: on CPython 3.11 collecting coroutines still suspended in
        # Daphne's per-connection queues was seen to crash (SIGSEGV) the exiting process.
        connections.close_all()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
