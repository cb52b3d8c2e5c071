"""Django's PostgreSQL backend with a health check that costs no round trip when it need not.

With persistent connections (``CONN_MAX_AGE``) and ``CONN_HEALTH_CHECKS``, Django checks a
reused connection at the first query of each request by sending ``SELECT 1``: one more round
trip to the server, and about a fifth of the CPU of an idle device poll (``bench/
poll_profile.py``), on every request of a busy server whose connections are never idle long.

A server that ends a connection (a restart, ``pg_terminate_backend``, an idle timeout)
tells the client: it sends a FATAL error and closes the socket, and either one makes the
socket readable. Between two requests nothing else arrives on a connection of the web tier,
which never LISTENs. So a connection that is idle, not inside a transaction, and whose
socket has nothing to read has not been ended by the server, and the check passes without
asking it. Anything unusual (something to read, an unknown transaction state, a connection
psycopg2 knows to be closed) takes Django's own check, which asks the server.

What neither check can see is a server that vanished without a word (a network cut): the
first query then waits, bounded by ``vending_site.backends.database``, and the request answers 503,
as it would when the network failed just after a ``SELECT 1``.
"""

import select

from django.db.backends.postgresql import base
from psycopg2 import extensions

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if (
            self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and _quiet(self.connection)
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()


def _quiet(connection) -> bool:
    """Open, idle outside any transaction, and with nothing from the server waiting."""
    if connection is None or connection.closed:
        return False
    if connection.get_transaction_status() != extensions.TRANSACTION_STATUS_IDLE:
        return False
    waiter = select.poll()
    try:
        waiter.register(connection.fileno(), select.POLLIN | select.POLLPRI)
    except (OSError, ValueError, extensions.InterfaceError):
        return False
    return not waiter.poll(0)
