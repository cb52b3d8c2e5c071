"""An unreachable database or Redis is a 503 with ``Retry-After``, never a 500 or a hang.

These run on any database (SQLite too): the failure is injected by patching the service a
view calls, or by pointing Redis at a port nothing listens on, or psycopg2 at a socket that
accepts and never answers. The real network faults are in ``test_backend_faults.py``.
"""

import json
import os
import socket
from unittest import mock

import pytest
from django.contrib.auth.models import Group
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.urls import path
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from devices.models import CommunicationLog
from tests.factories import UserFactory
from tests.scratch.children import run_python
from tests.scratch.net import free_port
from vending_site.auth.permissions import VEND_CLIENT_GROUP
from vending_site.backends.cache import FailOpenRedisCache
from vending_site.live import events

DEVICE_ID = "ESP32_6CC8404FE03C"


def plain_view_that_meets_a_dead_database(request):
    raise OperationalError("could not connect to server: Connection refused")


def plain_view_that_fails_otherwise(request):
    raise ValueError("a bug")


def plain_view_ok(request):
    return HttpResponse("ok")


urlpatterns = [
    path("dead-db", plain_view_that_meets_a_dead_database),
    path("bug", plain_view_that_fails_otherwise),
    path("ok", plain_view_ok),
]


def assert_unavailable(response, backend: str = "database", retry_after: int = 5) -> None:
    assert response.status_code == 503
    assert response["Retry-After"] == str(retry_after)
    body = json.loads(response.content)
    assert body["code"] == f"{backend}_unavailable"
    name = "the database" if backend == "database" else "Redis"
    assert body["detail"] == f"{name} is unavailable, retry in {retry_after} s"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "error",
    [
        OperationalError("server closed the connection unexpectedly"),
        InterfaceError("connection already closed"),
    ],
)
def test_a_device_poll_that_meets_a_dead_database_is_503_with_retry_after(api_client, error):
    with mock.patch("devices.api.device_views.poll", side_effect=error):
        response = api_client.get(f"/esp32/commands/{DEVICE_ID}")
    assert_unavailable(response)
    # The refusal is not written to the communication log: that log is in the dead database.
    assert not CommunicationLog.objects.exists()


@pytest.mark.django_db
def test_a_device_confirmation_that_meets_an_unreachable_redis_is_503_naming_redis(
    api_client, settings
):
    settings.OUTAGE_RETRY_AFTER = 7
    with mock.patch(
        "devices.api.device_views.confirm_vend", side_effect=RedisConnectionError("refused")
    ):
        response = api_client.post(
            "/esp32/confirm", {"device_id": DEVICE_ID, "slot": 1, "success": True}, format="json"
        )
    assert_unavailable(response, backend="redis", retry_after=7)


@pytest.mark.django_db
def test_a_rest_vend_that_meets_a_dead_database_is_503_with_retry_after(client_for, online_device):
    user = UserFactory()
    user.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])
    with mock.patch(
        "transactions.api.views.request_vend_once",
        side_effect=OperationalError("canceling statement due to statement timeout"),
    ):
        response = client_for(user).post(
            "/api/v1/vend/1", {"device_id": online_device.device_id}, format="json"
        )
    assert_unavailable(response)


@pytest.mark.urls("tests.faults.test_outage_answers")
def test_a_plain_django_view_that_meets_a_dead_database_is_503_through_the_middleware(client):
    assert_unavailable(client.get("/dead-db"))


@pytest.mark.urls("tests.faults.test_outage_answers")
def test_other_errors_of_a_plain_view_stay_500(client):
    client.raise_request_exception = False
    assert client.get("/bug").status_code == 500


@pytest.fixture
def redis_nowhere(settings):
    """The cache on Redis at a loopback port nothing listens on."""
    settings.CACHES = {
        "default": {
            "BACKEND": "vending_site.backends.cache.FailOpenRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/12",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    settings.REDIS_RETRY_AFTER = 60


@pytest.mark.django_db
def test_with_redis_down_device_throttles_fail_open_and_polls_answer_200(
    api_client, settings, redis_nowhere
):
    settings.DEVICE_THROTTLE = "1/min"  # a working cache would refuse the second poll
    settings.DEVICE_ADDRESS_THROTTLE = "1/min"
    answers = [api_client.get(f"/esp32/commands/{DEVICE_ID}").status_code for _ in range(3)]
    assert answers == [200, 200, 200]


def test_after_a_redis_failure_the_cache_leaves_redis_alone_for_a_while(settings):
    settings.REDIS_RETRY_AFTER = 60
    cache = FailOpenRedisCache("redis://127.0.0.1:1/12", {})
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        raise RedisError("down")

    with mock.patch("django.core.cache.backends.redis.RedisCache.get", failing):
        assert cache.get("a", default="miss") == "miss"
        assert cache.get("b", default="miss") == "miss"
        assert cache.set("c", 1) is None
    assert len(calls) == 1
    cache.breaker.reset()
    with mock.patch("django.core.cache.backends.redis.RedisCache.get", failing):
        cache.get("d")
    assert len(calls) == 2


def test_a_live_event_push_that_fails_is_logged_and_pauses_pushes(settings, caplog):
    settings.REDIS_RETRY_AFTER = 60
    layer = mock.Mock()
    layer.group_send = mock.AsyncMock(side_effect=RedisConnectionError("refused"))
    events._push_breaker.reset()
    try:
        with (
            mock.patch.object(events, "layer_crosses_processes", return_value=True),
            mock.patch.object(events, "get_channel_layer", return_value=layer),
        ):
            events._push({"kind": "device", "id": 1})
            events._push({"kind": "device", "id": 2})
    finally:
        events._push_breaker.reset()
    assert layer.group_send.await_count == 1
    assert "could not push device event" in caplog.text


def test_postgres_timeouts_come_from_the_environment():
    code = (
        "import json; from django.conf import settings; "
        "print(json.dumps(settings.DATABASES['default']['OPTIONS']))"
    )
    env = dict(
        os.environ,
        DATABASE_URL="postgres://u@127.0.0.1:5432/x?options=-c%20work_mem%3D4MB",
        DATABASE_CONNECT_TIMEOUT="3",
        DATABASE_STATEMENT_TIMEOUT="1.5",
        DJANGO_SETTINGS_MODULE="vending_site.settings",
    )
    out = run_python(["-c", f"import django; django.setup(); {code}"], env)
    options = json.loads(out.strip().splitlines()[-1])
    assert options["connect_timeout"] == 3
    assert options["options"] == "-c work_mem=4MB -c statement_timeout=1500"


def test_a_server_that_accepts_and_never_answers_fails_within_the_connect_timeout(settings):
    """psycopg2 alone would wait forever here; the bounded wait gives up."""
    import psycopg2
    from psycopg2 import extensions

    from vending_site.backends import database

    settings.DATABASE_CONNECT_TIMEOUT = 1
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody speaks
    previous = extensions.get_wait_callback()
    database.install()
    try:
        # The configured 1 s, named in the error: the deadline the wait gave up at.
        with pytest.raises(psycopg2.OperationalError, match=r"within 1 s \(connecting to"):
            psycopg2.connect(host="127.0.0.1", port=silent.getsockname()[1], user="x", dbname="x")
    finally:
        extensions.set_wait_callback(previous)
        silent.close()


@pytest.mark.postgres
def test_a_query_whose_server_stops_answering_mid_conversation_fails_in_bounded_time(settings):
    """The case libpq's connect_timeout and the server's statement_timeout cannot cover: the
    connection is open, the query is sent, and nothing comes back (the kernel still
    acknowledges every packet, so TCP keepalives see nothing wrong either)."""
    import threading

    import psycopg2
    from psycopg2 import extensions

    from tests.faults.proxy import FaultProxy
    from vending_site.backends import database

    settings.DATABASE_CONNECT_TIMEOUT = 2
    settings.DATABASE_STATEMENT_TIMEOUT = 1
    previous = extensions.get_wait_callback()
    database.install()
    outcome = {}
    with FaultProxy(5432, lifetime=60) as proxy:
        conn = psycopg2.connect(
            host="127.0.0.1", port=proxy.port, user="postgres", dbname="postgres"
        )
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            proxy.set_mode("hang")

            def query():
                try:
                    with conn.cursor() as cursor:
                        cursor.execute("SELECT 2")
                    outcome["result"] = "answered"
                except psycopg2.OperationalError as exc:
                    outcome["result"] = str(exc)

            thread = threading.Thread(target=query, daemon=True)
            thread.start()
            thread.join(8)
            stuck = thread.is_alive()
            proxy.set_mode("pass")  # a stuck query (the failing case) may end now
            thread.join(5)
        finally:
            extensions.set_wait_callback(previous)
            conn.close()
    assert not stuck, "the query waited for a server that does not answer"
    # statement_timeout 1 s + 1 s of grace, named in the error: the deadline it gave up at.
    assert "no answer from the database within 2 s" in outcome["result"]


@pytest.mark.postgres
def test_inside_statements_unbounded_a_statement_may_outlast_the_request_timeouts(db, settings):
    """What ``manage.py migrate`` runs in: neither the server's statement_timeout nor the
    client's bounded wait cuts a long schema change off; both are back afterwards."""
    from django.db import connection
    from psycopg2 import extensions

    from vending_site.backends import database

    settings.DATABASE_STATEMENT_TIMEOUT = 0.3  # the client gives up after 1.3 s
    previous = extensions.get_wait_callback()
    database.install()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 300")  # as the option would set it
            with database.statements_unbounded():
                cursor.execute("SELECT pg_sleep(1.5)")
            cursor.execute("SHOW statement_timeout")
            (after,) = cursor.fetchone()
    finally:
        extensions.set_wait_callback(previous)
    # RESET: back to the connection's own option (settings: DATABASE_STATEMENT_TIMEOUT at start).
    assert after == "10s"


def test_migrate_is_the_project_s_own_running_without_the_statement_timeout(db):
    from django.core.management import call_command, get_commands
    from django.core.management.commands.migrate import Command as DjangoMigrate

    from vending_site.backends import database

    seen = []

    def recording_handle(self, *args, **options):
        seen.append(database._unbounded_statements or connection_vendor() != "postgresql")

    assert get_commands()["migrate"] == "vending_site"
    with mock.patch.object(DjangoMigrate, "handle", recording_handle):
        call_command("migrate", verbosity=0)
    assert seen == [True]
    assert database._unbounded_statements is False


def connection_vendor() -> str:
    from django.db import connection

    return connection.vendor


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_poll_whose_connection_is_killed_after_the_claim_leaves_the_vend_queued(
    online_device,
):
    """Device-trust finding 3, as it was reproduced: PostgreSQL ends the poll's connection
    between the claim and the row that records the delivery (here a trigger terminates its
    own backend on that INSERT). The answer is 503, and the vend must still be queued, not
    `sent` to a machine that never saw it."""
    from django.db import connection
    from rest_framework.test import APIClient

    from devices.choices import CommandState
    from devices.models import Command
    from transactions.services import request_vend

    txn = request_vend(device=online_device, slot_number=3)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION kill_on_delivery() RETURNS trigger AS $$ BEGIN "
            "IF NEW.direction = 'out' THEN PERFORM pg_terminate_backend(pg_backend_pid()); "
            "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER kill_on_delivery BEFORE INSERT ON devices_communicationlog "
            "FOR EACH ROW EXECUTE FUNCTION kill_on_delivery()"
        )
    try:
        response = APIClient().get(f"/esp32/commands/{online_device.device_id}")
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER kill_on_delivery ON devices_communicationlog")
            cursor.execute("DROP FUNCTION kill_on_delivery()")

    assert response.status_code == 503
    assert Command.objects.get(transaction=txn).state == CommandState.QUEUED
    assert APIClient().get(f"/esp32/commands/{online_device.device_id}").json()["slot"] == 3
