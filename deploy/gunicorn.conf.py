"""gunicorn, the production server for every HTTP request (Daphne serves only ``/ws/``).

Every production launcher reads this file (docker-compose.yml, Procfile.prod-local,
deploy/systemd/vending-web.service, the tests) and gives only ``--bind``:

    gunicorn --config deploy/gunicorn.conf.py --bind 127.0.0.1:8000

Why WSGI with threads: ``bench/fleet_polling.py`` measured a poll through 2 gthread workers x
8 threads with persistent connections at a third of Daphne's CPU, with no errors where two
Daphne processes failed most polls (README "Production").

- **Workers and threads**: ``WEB_WORKERS`` (default 2) processes of ``WEB_THREADS`` (default
  8) threads. Each thread may keep one PostgreSQL connection, so a node holds up to
  workers x threads of them.
- **Persistent connections**: ``CONN_MAX_AGE`` defaults to 60 s here (0 for Daphne and the
  commands, see settings); an explicit ``CONN_MAX_AGE`` in the environment wins.
- **No preload** (``preload_app`` off): each worker imports Django after the fork, so no
  database connection, Redis client, thread or open file of the application is shared by
  two processes, and each worker compacts the metrics directory as it starts. The master
  loads the settings module only (pure configuration: it reads the environment and creates
  DATA_DIR; it opens no connection and starts no thread), so the ``WEB_*`` variables come
  from the same place as every other setting (``.env`` included), and
  ``PROMETHEUS_MULTIPROC_DIR`` is exported before anything imports prometheus_client.
  Settings are read once by the master: restart (not HUP) to change them.
- **Metrics across forks**: each worker counts in its own ``<kind>_<pid>.db`` file (a
  shared file mapping: a SIGKILL loses none of it). When the master reaps a worker (it
  exited, was recycled after ``WEB_MAX_REQUESTS`` or was killed), :func:`child_exit` folds
  its files into the archive at once, so the counts stay, counted once, and recycled
  workers leave no files behind.
- **Recycling**: ``max_requests`` with 10 % jitter bounds any slow growth of memory without
  restarting every worker at the same moment.
- **Stopping**: on SIGTERM a worker finishes its requests for up to ``graceful_timeout``
  (requests are bounded by ``DATABASE_STATEMENT_TIMEOUT`` + 1 s and ``VEND_MAX_WAIT``).
- **Logs**: the access log on stdout and gunicorn's own lines on stderr, both in the
  project's shape (``LOG_FORMAT``: JSON lines with ``timestamp``, ``level``, ``logger``,
  ``event``); an access line carries the ``request_id`` Django answered with.
- **Long-poll** (``DEVICE_LONG_POLL_SECONDS``) needs Daphne: here polls are answered at
  once, and :func:`when_ready` warns when it is set (see ``devices/api/long_poll.py``).
- **Scheme**: gunicorn never derives ``https`` from ``X-Forwarded-Proto`` itself; Django
  does, only with ``TRUST_X_FORWARDED_PROTO`` (as under Daphne).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
os.environ.setdefault("CONN_MAX_AGE", "60")

from django.conf import settings  # noqa: E402
from gunicorn import glogging  # noqa: E402

wsgi_app = "vending_site.wsgi:application"
chdir = str(ROOT)
worker_class = "gthread"
workers = settings.WEB_WORKERS
threads = settings.WEB_THREADS
preload_app = False
max_requests = settings.WEB_MAX_REQUESTS
max_requests_jitter = max(settings.WEB_MAX_REQUESTS // 10, 1)
# A worker whose main loop stalls this long is killed and replaced (gthread beats from its
# main loop, not from the request threads, so a long request alone does not trigger it).
timeout = 30
graceful_timeout = 20
# Idle keep-alive connections wait in the worker's poller, not in a thread. Longer than
# nginx's upstream keepalive_timeout (60 s), so nginx, not gunicorn, closes an idle one and
# never sends a request on a connection gunicorn is closing.
keepalive = 75
# The heartbeat file in memory, not on a container's overlay filesystem.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
secure_scheme_headers = {}
accesslog = "-"
errorlog = "-"
loglevel = settings.LOG_LEVEL.lower()
proc_name = "vending-web"
# No control socket: its default path ($HOME/.gunicorn/gunicorn.ctl) would be shared by two
# masters on one host, and the systemd unit may not write there. Signals still work (HUP
# reloads, TTIN/TTOU add or remove a worker, TERM stops gracefully).
control_socket_disable = True


class Logger(glogging.Logger):
    """gunicorn's logs in the project's shape (``vending_site/logging.py``)."""

    def setup(self, cfg):
        super().setup(cfg)
        from vending_site.logging import get_logger, make_formatter

        formatter = make_formatter(settings.LOG_FORMAT)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)
        self.structured_access = get_logger("gunicorn.access")

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        answered = {name.lower(): value for name, value in resp.headers}
        self.structured_access.info(
            "request",
            method=environ.get("REQUEST_METHOD"),
            path=environ.get("PATH_INFO"),
            query=environ.get("QUERY_STRING") or None,
            status=int(status),
            bytes=getattr(resp, "sent", None),
            duration_ms=round(request_time.total_seconds() * 1000, 1),
            remote_addr=environ.get("REMOTE_ADDR"),
            request_id=answered.get("x-request-id"),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )


logger_class = Logger


def when_ready(server):
    """Say once, at start, what long-poll does here (devices/api/long_poll.py)."""
    if settings.DEVICE_LONG_POLL_SECONDS > 0:
        server.log.warning(
            "DEVICE_LONG_POLL_SECONDS=%g has no effect under gunicorn: polls are answered at "
            "once (a WSGI thread cannot wait for a command without being held); route the "
            "poll paths to Daphne to hold them",
            settings.DEVICE_LONG_POLL_SECONDS,
        )


def child_exit(server, worker):
    """In the master, right after a worker was reaped: fold its metric files (and those of
    any other dead process) into the archive. Never lets a metrics problem stop the master."""
    from vending_site.metrics_files import compact_dead_processes

    try:
        compact_dead_processes(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    except Exception:  # the next worker to start compacts again
        server.log.exception("metrics compaction after worker %s failed", worker.pid)
