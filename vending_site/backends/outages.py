"""When the database or Redis cannot be reached: 503 with ``Retry-After``, never a 500.

An unreachable backend is not a bug in the request, and nothing the client sent was wrong:
the answer says so (``{"detail": "the database is unavailable, retry in 5 s", "code":
"database_unavailable"}``, status 503, ``Retry-After: 5``), so a kiosk or a load balancer
retries instead of reporting a server error. The firmware treats any non-200 as "no answer"
and polls again on its own schedule.

Two places turn such an error into that answer: the DRF exception handler
(``vending_site.http.errors``) for API and device views, and :class:`OutageMiddleware` for plain
Django views (the dashboard, the admin). Both use :func:`unavailable_backend` and
:func:`outage_body`, so the rule lives here once.

What counts as unreachable: Django's ``OperationalError`` and ``InterfaceError`` (connection
refused, reset, closed, timed out, statement cancelled by ``statement_timeout``; on SQLite a
lock that outlived its timeout) and redis-py's connection and timeout errors.
"""

import threading
import time
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.utils.deprecation import MiddlewareMixin

from vending_site.observability import logging as vlog

log = vlog.get_logger(__name__)

try:  # redis-py is installed with channels-redis; a SQLite-only install may lack it
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    _REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover
    _REDIS_ERRORS = ()


def unavailable_backend(exc: BaseException) -> str | None:
    """``"database"`` or ``"redis"`` when ``exc`` means that backend is unreachable, else None."""
    if isinstance(exc, OperationalError | InterfaceError):
        return "database"
    if _REDIS_ERRORS and isinstance(exc, _REDIS_ERRORS):
        return "redis"
    return None


def retry_after() -> int:
    return settings.OUTAGE_RETRY_AFTER


def outage_body(backend: str) -> dict[str, Any]:
    seconds = retry_after()
    name = "the database" if backend == "database" else "Redis"
    return {
        "detail": f"{name} is unavailable, retry in {seconds} s",
        "code": f"{backend}_unavailable",
    }


def log_outage(backend: str, exc: BaseException) -> None:
    # A warning, not an error with a traceback: the cause is outside this server, and an
    # outage would otherwise flood the log with identical tracebacks.
    log.warning("backend_unavailable", backend=backend, error=str(exc).strip()[:300])


class OutageMiddleware(MiddlewareMixin):
    """503 with ``Retry-After`` for a plain Django view that met an unreachable backend.

    DRF views answer through the exception handler before this is reached; this covers the
    rest (dashboard pages, the admin, template rendering). Sync- and async-capable
    (``MiddlewareMixin``), so the async vend view is not pushed into a thread.
    """

    def process_exception(self, request, exception):
        backend = unavailable_backend(exception)
        if backend is None:
            return None
        log_outage(backend, exception)
        return outage_response(backend)


def outage_response(backend: str) -> JsonResponse:
    response = JsonResponse(outage_body(backend), status=503)
    response["Retry-After"] = str(retry_after())
    return response


class Breaker:
    """Open (skip the backend) for ``pause`` seconds after a failure; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_until = 0.0

    def allows(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self, pause: float) -> bool:
        """Open the breaker; True when it was closed (the caller logs the outage once)."""
        with self._lock:
            was_closed = self.allows()
            self._open_until = time.monotonic() + pause
            return was_closed

    def reset(self) -> None:
        with self._lock:
            self._open_until = 0.0
