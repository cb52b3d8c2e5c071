"""Scratch PostgreSQL databases and Redis databases for the scratch stack.

PostgreSQL: the server DATABASE_URL names when it is PostgreSQL, else
postgres@127.0.0.1:5432. A database made with ``template=True`` is cloned from a migrated
template made once per process (``<prefix>tpl_<pid>_<hex>``, dropped at exit; a child
process reuses its parent's through ``SCRATCH_TEMPLATE_DB``), so only the first stack of a
run migrates. Redis: REDIS_URL's server (else 127.0.0.1:6379), a database number the caller
owns and flushes, never the developer's own.
"""

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from urllib.parse import urlsplit, urlunsplit

from tests.scratch import ROOT

DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_SERVER = "redis://127.0.0.1:6379"
TEMPLATE_ENV = "SCRATCH_TEMPLATE_DB"


def pg_admin_url() -> str:
    """The maintenance database of the server named by DATABASE_URL (if PostgreSQL), else
    postgres@127.0.0.1:5432."""
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith(("postgres://", "postgresql://")):
        return DEFAULT_PG
    parts = urlsplit(configured)
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))


def database_url(name: str) -> str:
    """The URL of database ``name`` on the scratch PostgreSQL server."""
    parts = urlsplit(pg_admin_url())
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


ADMIN_STATEMENT_TIMEOUT = "120s"


def admin_sql(*statements: str) -> None:
    """Statements run in autocommit on the maintenance database, each ended by the server
    after ``ADMIN_STATEMENT_TIMEOUT``. Not the application's bound on waits (its statement
    timeout plus a second, ``vending_site.backends.database``, installed in any process that
    loaded the settings): a CREATE or DROP DATABASE waits for a checkpoint and for the
    backends it ends, which took over 11 s on a loaded CI machine."""
    import psycopg2

    from vending_site.backends.database import waits_left_to_the_server

    connection = psycopg2.connect(pg_admin_url(), connect_timeout=5)
    connection.autocommit = True
    try:
        with waits_left_to_the_server(), connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = '{ADMIN_STATEMENT_TIMEOUT}'")
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a read-only query on the database at ``url`` (a cheap poll, no Django)."""
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()


def count_open_vends(url: str) -> int:
    """Vends still ``queued`` or ``sent`` in the scratch database at ``url``."""
    return query(
        url, "SELECT count(*) FROM transactions_transaction WHERE state IN ('queued', 'sent')"
    )[0][0]


_created: set[str] = set()
_template: dict[str, str] = {}
_template_lock = threading.Lock()


def create_database(prefix: str, *, template: bool = False) -> str:
    """A new database ``<prefix><pid>_<hex>``, empty or (``template``) migrated; its name.
    Only names made here can be dropped by :func:`drop_database`."""
    name = f"{prefix}{os.getpid()}_{secrets.token_hex(4)}"
    source = f' TEMPLATE "{migrated_template(prefix)}"' if template else ""
    admin_sql(f'CREATE DATABASE "{name}"{source}')
    _created.add(name)
    return name


def drop_database(name: str) -> None:
    """Drop a database :func:`create_database` made (FORCE: a SIGKILLed worker's backend
    may linger a moment); a failure is printed, not raised."""
    if name not in _created:
        raise ValueError(f"refusing to drop {name!r}: not a scratch database of this process")
    try:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _created.discard(name)
    except Exception as exc:  # noqa: BLE001 - best effort at teardown; say so rather than hide it
        print(f"scratch: could not drop {name}: {exc}", file=sys.stderr)


def migrated_template(prefix: str) -> str:
    """A migrated ``<prefix>tpl_<pid>_<hex>`` database, made once per process (dropped at
    exit), or the parent's when ``SCRATCH_TEMPLATE_DB`` names one."""
    with _template_lock:
        inherited = os.environ.get(TEMPLATE_ENV, "")
        if "name" not in _template and inherited:
            _template["name"] = inherited  # made (and dropped at exit) by the parent process
        if "name" not in _template:
            name = create_database(f"{prefix}tpl_")
            atexit.register(drop_database, name)
            data_dir = tempfile.mkdtemp(prefix="vending-scratch-tpl-")
            env = dict(os.environ, DATABASE_URL=database_url(name), DATA_DIR=data_dir)
            env["LOG_LEVEL"] = "WARNING"
            try:
                subprocess.run(
                    [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    timeout=180,
                    capture_output=True,
                )
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
            _template["name"] = name
        return _template["name"]


def redis_url(db: int) -> str:
    """Database ``db`` on REDIS_URL's server (else 127.0.0.1:6379): never REDIS_URL's own
    database number, which names the developer's data."""
    configured = os.environ.get("REDIS_URL", "")
    if not configured.startswith(("redis://", "rediss://")):
        return f"{DEFAULT_REDIS_SERVER}/{db}"
    parts = urlsplit(configured)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_usable(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def services_available(redis: str) -> str:
    """'' when PostgreSQL and the Redis database ``redis`` answer, else what is missing."""
    missing = []
    try:
        admin_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - psycopg2 missing, refused, bad auth: all "missing"
        missing.append(f"PostgreSQL ({pg_admin_url()}): {exc}".strip())
    if not redis_usable(redis):
        missing.append(f"Redis ({redis}): no answer")
    return "; ".join(missing)
