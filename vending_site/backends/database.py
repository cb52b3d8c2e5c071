"""Bounded waits on PostgreSQL: no request waits forever for a server that stopped answering.

libpq's ``connect_timeout`` and the server's ``statement_timeout`` (both set in settings)
cover a server that is slow. They do not cover one that stops answering: a network that
drops packets, a proxy or firewall that holds the connection open, a machine that froze.
TCP keepalives do not help either when something in between still acknowledges the packets.
Then libpq would wait for the answer forever, and the request (and its worker thread) with it.

So every wait on a PostgreSQL socket is bounded here. psycopg2 lets a program wait for the
socket itself (``set_wait_callback``, the hook gevent uses); :func:`bounded_wait` waits with
``select`` until a deadline: ``DATABASE_CONNECT_TIMEOUT`` while connecting,
``DATABASE_STATEMENT_TIMEOUT`` plus a second of grace for anything else (a query, a commit),
so the server's own cancellation, which leaves the connection usable, normally comes first.
Past the deadline it raises ``OperationalError``; psycopg2 then closes the connection and
Django opens a new one for the next request. The request answers 503
(``vending_site.backends.outages``).

Schema changes are not requests: ``manage.py migrate`` runs inside
:func:`statements_unbounded`, so an ``ALTER TABLE`` or index build on a large table may take
as long as it needs (connecting stays bounded).
"""

import contextlib
import select
import time

from django.conf import settings

GRACE = 1.0  # seconds past statement_timeout before the client gives up itself
_unbounded_statements = False


def bounded_wait(conn) -> None:
    """psycopg2 wait callback: drive ``conn`` until ready, or raise past the deadline."""
    import psycopg2
    from psycopg2 import extensions

    connecting = conn.status == extensions.STATUS_SETUP or not _connected(conn)
    if connecting:
        limit = float(settings.DATABASE_CONNECT_TIMEOUT)
    elif _unbounded_statements:
        limit = float("inf")
    else:
        limit = settings.DATABASE_STATEMENT_TIMEOUT + GRACE
    deadline = time.monotonic() + limit
    for _ in range(1_000_000):  # bounded by the deadline; the count is a backstop
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            what = "connecting to" if connecting else "waiting for"
            raise psycopg2.OperationalError(
                f"no answer from the database within {limit:g} s ({what} the server)"
            )
        if state in (extensions.POLL_READ, extensions.POLL_WRITE):
            # poll(), not select(): a busy server's descriptors can pass select()'s 1024.
            waiter = select.poll()
            waiter.register(
                conn.fileno(), select.POLLIN if state == extensions.POLL_READ else select.POLLOUT
            )
            waiter.poll(None if left == float("inf") else left * 1000)
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
    raise psycopg2.OperationalError("the database connection never became ready")


def _connected(conn) -> bool:
    # While psycopg2 connects, the status is an internal "connecting" value (not one of
    # the public STATUS_* constants) and the server has reported no version yet.
    try:
        return bool(conn.server_version)
    except Exception:  # noqa: BLE001 - any doubt means "still connecting"
        return False


def install() -> None:
    """Bound every PostgreSQL wait of this process (idempotent)."""
    from psycopg2 import extensions

    extensions.set_wait_callback(bounded_wait)


@contextlib.contextmanager
def waits_left_to_the_server():
    """While the block runs, this process waits for a statement as long as the server takes
    (the server's own ``statement_timeout``, if any, still ends it); connecting stays
    bounded. Process-wide: for schema changes and test scaffolding, never for requests."""
    global _unbounded_statements
    previous = _unbounded_statements
    _unbounded_statements = True
    try:
        yield
    finally:
        _unbounded_statements = previous


@contextlib.contextmanager
def statements_unbounded(alias: str = "default"):
    """No statement timeout, on the server or here, for this process's connection ``alias``
    while the block runs (on PostgreSQL; elsewhere a no-op). For schema changes only."""
    from django.db import connections

    connection = connections[alias]
    if connection.vendor != "postgresql":
        yield
        return
    try:
        with waits_left_to_the_server():
            with connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = 0")
            yield
    finally:
        if connection.connection is not None:
            with contextlib.suppress(Exception), connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")  # back to the connection's option
