"""``manage.py serve``: granian serving the ASGI application (HTTP and the dashboard's
WebSocket, ``vending_site.asgi``) on HOST:PORT, in one worker process.

One worker: the in-memory channel layer and the local-memory cache (the throttles' counts)
are per process, and SQLite takes one writer at a time; the figures of one worker against
two are in docs/architecture.md. granian's HTTP parsing and socket work are Rust, outside
the GIL; the worker's Python thread runs the event loop, and asgiref's one thread-sensitive
thread runs Django's synchronous code (so SQLite is used from one thread).

Stopping: on SIGINT or SIGTERM granian stops the worker, which finishes its requests and
closes its sockets; a worker still busy after ``STOP_TIMEOUT`` seconds is killed.
"""

import importlib
import os
import signal

from django.conf import settings
from django.core.management.base import BaseCommand

TARGET = "vending_site.asgi:application"
# Seconds the worker has to finish its requests on SIGINT/SIGTERM: under compose's 10 s
# stop_grace_period for `ws`; honcho (make run) kills after 5 s anyway.
STOP_TIMEOUT = 8
IDLE_SECONDS = 60  # granian's header-read timeout, also its keep-alive idle limit (max 60)
# The line Daphne wrote, in granian's fields: client, request line, status, duration.
ACCESS_FORMAT = (
    '%(addr)s - - [%(time)s] "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1fms'
)


def log_config(access_log: str) -> dict:
    """granian's own lines on stderr, rendered as every other line of the project; its access
    lines (plain text) on stdout (``-``) or appended to the file ``access_log``."""
    access_handler = (
        {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
        if access_log == "-"
        else {"class": "logging.FileHandler", "filename": access_log}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "project": {
                "()": "vending_site.observability.logging.make_formatter",
                "fmt": settings.LOG_FORMAT,
            },
            "access": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "project",
                "stream": "ext://sys.stderr",
            },
            "access": {**access_handler, "formatter": "access"},
        },
        "loggers": {
            "_granian": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def load_application(target: str):
    """In the worker: SIGTERM and SIGINT back to their defaults while it loads the
    application. It is forked with the main process' handlers, which only set flags of the
    main process; granian's worker installs its own once the application is loaded. A worker
    still loading serves nothing, so ending it at once loses nothing (as deploy/web.py)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build(*, host: str, port: int, access_log: str, target: str = TARGET):
    """The server ``serve`` runs (tests and benchmarks start it through the command)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    quiet = access_log == os.devnull
    return Granian(
        target,
        address=host,
        port=port,
        # ASGI without lifespan: Channels' router has no lifespan protocol.
        interface=Interfaces.ASGINL,
        workers=1,
        websockets=True,
        http1_settings=HTTP1Settings(header_read_timeout=IDLE_SECONDS * 1000),
        log_level=LogLevels(settings.LOG_LEVEL.lower()),
        log_dictconfig=log_config("-" if quiet else access_log),
        log_access=not quiet,
        log_access_format=ACCESS_FORMAT,
        respawn_failed_workers=True,
        workers_kill_timeout=STOP_TIMEOUT,
        working_dir=settings.BASE_DIR,
    )


class Command(BaseCommand):
    help = "Serve HTTP and WebSockets with granian (ASGI) on HOST:PORT (default 0.0.0.0:5000)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument(
            "--access-log", default="-", help="File for the access log; - is stdout."
        )

    def handle(self, *args, host: str, port: int, access_log: str, **options):
        self.stdout.write(f"Serving on http://{host}:{port}/ (admin at /admin/)")
        self.stdout.flush()
        build(host=host, port=port, access_log=access_log).serve(target_loader=load_application)
