"""The health check of persistent PostgreSQL connections
(vending_site/backends/postgresql/base.py)."""

import time

import psycopg2
import pytest
from django.core import signals
from django.db import connections
from django.test import Client

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def persistent():
    """The default connection as granian's threads keep it (deploy/web.py): CONN_MAX_AGE 60,
    checked."""
    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL)")
    saved = {key: connection.settings_dict[key] for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}
    connection.close()
    connection.settings_dict.update(CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=True)
    observer = psycopg2.connect(**connection.get_connection_params())
    observer.autocommit = True
    try:
        yield connection, observer
    finally:
        observer.close()
        connection.close()
        connection.settings_dict.update(saved)


def backend_pid(connection) -> int:
    connection.ensure_connection()
    return connection.connection.get_backend_pid()


def last_statement(observer, pid: int) -> str | None:
    with observer.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row[0] if row else None


def between_requests() -> None:
    """What Django does when a request ends and the next one starts."""
    signals.request_finished.send(sender=None)
    signals.request_started.send(sender=None)


def test_a_quiet_connection_passes_without_asking_the_server(persistent):
    connection, observer = persistent
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'the last statement of the previous request'")
    pid = backend_pid(connection)
    between_requests()
    assert connection.health_check_done is False  # a new request: the check is due

    connection.close_if_health_check_failed()

    assert connection.health_check_done is True
    assert connection.connection is not None and connection.connection.get_backend_pid() == pid
    # Django's own check would have sent SELECT 1; this one sent nothing.
    assert last_statement(observer, pid) == "SELECT 'the last statement of the previous request'"


def test_a_connection_the_server_ended_is_replaced_before_the_request_uses_it(persistent):
    connection, observer = persistent
    client = Client()
    assert client.get("/health").status_code == 200  # opens and keeps a connection
    pid = backend_pid(connection)
    with observer.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    for _ in range(100):  # the backend is gone within a moment; bounded at 5 s
        if last_statement(observer, pid) is None:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"backend {pid} still there after pg_terminate_backend")
    between_requests()  # the test client leaves this to the test

    response = client.get("/health")

    assert response.status_code == 200, response.content
    assert backend_pid(connection) != pid


def test_a_connection_inside_a_transaction_takes_the_servers_check(persistent):
    connection, observer = persistent
    pid = backend_pid(connection)
    between_requests()
    raw = connection.connection
    with raw.cursor() as cursor:  # psycopg2 itself: a transaction Django does not know of
        raw.autocommit = False
        cursor.execute("SELECT 'inside a transaction'")
    try:
        connection.close_if_health_check_failed()
        assert last_statement(observer, pid) == "SELECT 1"
    finally:
        raw.rollback()
        raw.autocommit = True
