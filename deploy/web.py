"""The production web server: granian serving ``vending_site.wsgi`` (every HTTP request;
``manage.py serve``, granian's ASGI interface, serves only the WebSocket ``/ws/``).

Every production launcher runs this file and gives only ``--bind`` (docker-compose.yml,
Procfile.prod-local, deploy/systemd/vending-web.service, the tests, the benchmarks)::

    python deploy/web.py --bind 127.0.0.1:8000

Why granian: its HTTP/1.1 parsing, keep-alive and socket work are Rust, outside the GIL; the
worker's Python threads run Django only. ``bench/fleet_polling.py`` measured it against
gunicorn's gthread workers (whose parser, poller and access log are Python sharing the GIL
with the requests) with the same workers and threads, at 1000 machines polling every 2 s
plus 20 vends/s, in three side-by-side rounds: poll p99 34-208 ms against 346-514 ms, with
12-17 % less server CPU (docs/benchmarks.md).

- **Workers and threads**: ``WEB_WORKERS`` (default 2) processes, each running requests on
  ``WEB_THREADS`` (default 8) blocking threads. Each thread may keep one PostgreSQL
  connection, and the worker's ``last_seen`` writer (``devices/presence.py``) one more, so a
  node holds up to workers x (threads + 1) of them.
- **Persistent connections**: ``CONN_MAX_AGE`` defaults to 60 s here (0 for ``manage.py
  serve`` and the commands, see settings); an explicit ``CONN_MAX_AGE`` in the environment wins.
- **No preload**: this process (granian's main process) loads the settings module only
  (pure configuration: it reads the environment and creates DATA_DIR; it opens no
  connection and starts no thread), so the ``WEB_*`` variables come from the same place as
  every other setting (``.env`` included), and ``PROMETHEUS_MULTIPROC_DIR`` is exported
  before any worker imports prometheus_client. Each worker imports Django after the fork,
  so no database connection, Redis client or open file of the application is shared by two
  processes. Settings are read once: restart to change them.
- **Workers that die** (SIGKILL, a crash) are replaced. A worker that dies again within
  5.5 s of being replaced is a crash loop: granian then exits non-zero, and the supervisor
  (systemd ``Restart=on-failure``, compose ``restart: unless-stopped``) starts it again.
- **Metrics across forks**: each worker counts in its own ``<kind>_<pid>.db`` file (a
  shared file mapping: a SIGKILL loses none of it). A worker that starts folds the files of
  dead processes into the archive (``vending_site.observability.metrics``), so a replaced worker's
  counts
  stay, counted once; when granian stops, :func:`fold_metrics` folds the last workers'.
- **Recycling**: with ``WEB_MAX_RSS_MB`` set, a worker whose memory is above it at a sample
  (every 30 s) is replaced gracefully, which bounds any slow growth. Off by default (the
  soak measured flat memory; see settings for the reset it may cause).
- **Idle connections**: granian closes a keep-alive connection that sends no request for
  60 s (``IDLE_SECONDS``, its longest header-read timeout; its default is 30 s). nginx's
  upstream closes its idle ones after 45 s, so nginx is always the side that closes and never
  sends a request on a connection granian is closing.
- **Threads stay**: an idle blocking thread lives 600 s (granian's longest; its default,
  30 s, would end threads and their persistent database connections between bursts).
- **Stopping**: on SIGTERM the workers finish their requests; one that has not stopped
  after ``STOP_TIMEOUT`` seconds is killed (requests are bounded by
  ``DATABASE_STATEMENT_TIMEOUT`` + 1 s and ``VEND_MAX_WAIT``).
- **Logs**: granian's own lines on stderr in the project's shape (``LOG_FORMAT``); the
  access log is the application's (``vending_site.wsgi``, ``WEB_ACCESS_LOG``), so each line
  carries the ``request_id`` Django answered with.
- **Scheme**: granian never derives ``https`` from ``X-Forwarded-Proto`` itself; Django
  does, only with ``TRUST_X_FORWARDED_PROTO`` (as under ``manage.py serve``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "vending_site.wsgi:application"
STOP_TIMEOUT = 20  # seconds a worker has to finish its requests on SIGTERM
RSS_SAMPLE_SECONDS = 30
IDLE_SECONDS = 60  # granian's header-read timeout, also its keep-alive idle limit (max 60)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve HTTP with granian (WSGI) on --bind.")
    parser.add_argument("--bind", required=True, help="HOST:PORT, e.g. 127.0.0.1:8000")
    parser.add_argument("--workers", type=int, help="worker processes (default WEB_WORKERS)")
    parser.add_argument("--threads", type=int, help="threads per worker (default WEB_THREADS)")
    args = parser.parse_args(argv)
    host, sep, port = args.bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--bind {args.bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    args.host, args.port = host.strip("[]"), int(port)
    for name in ("workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def log_config(fmt: str) -> dict:
    """granian's own loggers, rendered like every other line of the project, on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "project": {"()": "vending_site.observability.logging.make_formatter", "fmt": fmt}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "project",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "_granian": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def fold_metrics() -> None:
    """Fold the metric files of every dead worker into the archive (granian has stopped its
    workers). Never lets a metrics problem change how the server exits."""
    from vending_site.observability.metrics_files import compact_dead_processes

    try:
        compact_dead_processes(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    except Exception:  # the next worker to start compacts again
        logging.getLogger("_granian").exception("metrics compaction at shutdown failed")


def load_application(target: str):
    """In a worker, before it imports Django: SIGTERM and SIGINT back to their defaults.

    A worker is forked with the main process' handlers, which only set flags of the main
    process; granian's worker installs its own once the application is loaded. Without this,
    a SIGTERM during the second or so a worker spends importing Django was lost, and stopping
    granian then waited ``STOP_TIMEOUT`` to kill that worker. A worker still loading serves
    nothing, so ending it at once loses nothing. The window between the fork and this call
    (granian configuring the worker's logging) is still the main process' handlers'."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.getLogger("_granian").info("Worker %d loading the application", os.getpid())
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build(args: argparse.Namespace, settings, target: str = TARGET):
    """The server as every launcher runs it; ``target`` is another application only for
    ``bench/hello_wsgi.py`` (the server's own ceiling, measured with the same settings)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    server = Granian(
        target,
        address=args.host,
        port=args.port,
        interface=Interfaces.WSGI,
        workers=args.workers or settings.WEB_WORKERS,
        blocking_threads=args.threads or settings.WEB_THREADS,
        blocking_threads_idle_timeout=600,
        websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=IDLE_SECONDS * 1000),
        log_level=LogLevels(settings.LOG_LEVEL.lower()),
        log_dictconfig=log_config(settings.LOG_FORMAT),
        log_access=False,
        respawn_failed_workers=True,
        workers_kill_timeout=STOP_TIMEOUT,
        workers_max_rss=settings.WEB_MAX_RSS_MB or None,
        rss_sample_interval=RSS_SAMPLE_SECONDS,
        working_dir=ROOT,
    )
    server.on_shutdown(fold_metrics)
    return server


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    os.environ.setdefault("CONN_MAX_AGE", "60")
    from django.conf import settings

    server = build(args, settings)
    server.serve(target_loader=load_application)


if __name__ == "__main__":
    main()
