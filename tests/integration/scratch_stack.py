"""A throwaway PostgreSQL database, a private Redis database, and the project's processes
running against them, for tests that must see real workers die.

The pytest process keeps its own test database (SQLite or PostgreSQL); everything here
talks to a database of its own, created and dropped by the caller, so the same test runs in
both CI passes. Writes into that database happen in a child process
(``python -m tests.integration.scratch_stack setup|report``) through the project's own
services, so the pytest process never has to switch databases.

Child output goes to files (a pipe nobody drains would block a chatty worker).
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB_SERVER = ROOT / "deploy" / "web.py"
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
# Redis database 9: the events-consumer tests use 3, a developer's server usually 0.
# SCRATCH_REDIS_URL: engineers sharing one Redis server tell their databases apart.
REDIS_URL = os.environ.get("SCRATCH_REDIS_URL", "redis://127.0.0.1:6379/9")


def web_argv(bind: str, *options: str) -> list[str]:
    """The production web server's command line (``deploy/web.py``, as the Procfile,
    compose and systemd run it) bound to ``bind``; ``options`` are its other flags
    (``--workers``, ``--threads``). Tests and the benchmarks start it only through this."""
    return [sys.executable, str(WEB_SERVER), "--bind", bind, *options]


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def create_database() -> str:
    """Create an empty database with a unique name; returns its DATABASE_URL."""
    import psycopg2

    # SCRATCH_DATABASE_PREFIX: engineers sharing one server tell their databases apart.
    prefix = os.environ.get("SCRATCH_DATABASE_PREFIX", "vending_sigkill")
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(connect_timeout=3, **PG_ADMIN)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    return f"postgres://{PG_ADMIN['user']}@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{name}"


def drop_database(url: str) -> None:
    import psycopg2

    name = url.rsplit("/", 1)[1]
    admin = psycopg2.connect(connect_timeout=3, **PG_ADMIN)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            # A SIGKILLed worker's backend may linger a moment; FORCE ends it (PostgreSQL 13+).
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def count_open_vends(url: str) -> int:
    """Vends still ``queued`` or ``sent`` in the scratch database (a cheap poll, no Django)."""
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=3)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM transactions_transaction WHERE state IN ('queued', 'sent')"
            )
            return cursor.fetchone()[0]
    finally:
        connection.close()


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_usable() -> bool:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class Stack:
    """Children started with one environment; every one is ended by :meth:`close`."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        self.logs = logs
        self.children: dict[str, subprocess.Popen] = {}

    def run(self, *args: str, timeout: float = 60.0) -> str:
        """A management command or module run to completion; its stdout (fails loudly)."""
        result = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result.stdout

    def seed(self, devices: list[str], stock: list[int], username: str, password: str) -> dict:
        """Migrate the database, then :func:`_setup` it (in a child with this environment);
        returns what ``setup`` printed."""
        self.run("manage.py", "migrate", "--noinput", "-v", "0", timeout=180)
        request = {"devices": devices, "stock": stock, "username": username, "password": password}
        return json.loads(
            self.run("-m", "tests.integration.scratch_stack", "setup", json.dumps(request))
        )

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """``manage.py <args>`` in the background."""
        return self.start_argv(name, [sys.executable, "manage.py", *args])

    def start_web(self, name: str, bind: str, *options: str) -> subprocess.Popen:
        """The production web server (see :func:`web_argv`) in the background."""
        return self.start_argv(name, web_argv(bind, *options))

    def start_argv(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        process.log = log
        self.children[name] = process
        return process

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def close(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every child still running, SIGKILL any that outlives ``timeout``."""
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.children.items():
            try:
                codes[name] = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait(timeout=timeout)
            process.log.close()
        return codes


# --- the child side: setup and report, run with DATABASE_URL naming the scratch database ---


def _setup(devices: list[str], stock: list[int], username: str, password: str) -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from devices.choices import Protocol, Transport
    from devices.services import register_device
    from inventory.choices import MovementReason
    from inventory.models import Product, Slot, StockMovement
    from inventory.services import set_stock
    from vending_site.permissions import VEND_CLIENT_GROUP

    user = get_user_model().objects.create_user(username, password=password)
    user.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])  # may use the API
    for device_id in devices:
        device, _ = register_device(
            raw_id=device_id,
            transport=Transport.WIFI,
            protocol=Protocol.WIFI_V2,
            slot_count=len(stock),
            admitted=True,  # the operator's own machines, played on this host
            address="127.0.0.1",
        )
        for number, quantity in enumerate(stock, start=1):
            product, _ = Product.objects.get_or_create(
                sku=f"SIGKILL-{number}", defaults={"name": f"Item {number}", "price": 1}
            )
            slot = Slot.objects.get(device=device, number=number)
            Slot.objects.filter(pk=slot.pk).update(product=product, capacity=max(quantity, 10))
            slot.refresh_from_db()
            set_stock(slot=slot, quantity=quantity, reason=MovementReason.RESTOCK)
    last = StockMovement.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    return {"ledger_after_setup": last}


def _report(ledger_after_setup: int) -> dict:
    from django.db.models import Sum

    from devices.models import Command
    from inventory.models import Slot, StockMovement
    from tests import accounting
    from transactions.models import Transaction, TransactionEvent

    transactions = {
        str(row["id"]): {**row, "id": str(row["id"]), "device": row.pop("device__device_id")}
        for row in Transaction.objects.values(
            "id", "state", "device__device_id", "slot_number", "idempotency_key"
        )
    }
    events: dict[str, list[list[str]]] = {}
    for row in TransactionEvent.objects.order_by("created_at", "pk").values(
        "transaction_id", "from_state", "to_state"
    ):
        events.setdefault(str(row["transaction_id"]), []).append(
            [row["from_state"], row["to_state"]]
        )
    commands = {
        str(row["id"]): {**row, "transaction_id": str(row["transaction_id"])}
        for row in Command.objects.values("id", "state", "transaction_id", "slot", "kind")
    }
    ledger = {
        row["slot_id"]: row["total"]
        for row in StockMovement.objects.filter(pk__gt=ledger_after_setup)
        .values("slot_id")
        .annotate(total=Sum("delta"))
    }
    per_txn_ledger: dict[str, list[int]] = {}
    for row in StockMovement.objects.filter(transaction__isnull=False).values(
        "transaction_id", "delta"
    ):
        per_txn_ledger.setdefault(str(row["transaction_id"]), []).append(row["delta"])
    slots = [
        {
            "device": row["device__device_id"],
            "number": row["number"],
            "quantity": row["quantity"],
            "ledger": ledger.get(row["pk"], 0),
        }
        for row in Slot.objects.values("pk", "device__device_id", "number", "quantity")
    ]
    return {
        "transactions": transactions,
        "events": events,
        "commands": commands,
        "slots": slots,
        "txn_ledger": per_txn_ledger,
        # Each slot's stock by its vends and by its ledger, for tests.accounting.check_stock.
        "accounting": accounting.slot_figures_as_dicts(
            accounting.start_at_movement(ledger_after_setup)
        ),
    }


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    import django

    django.setup()
    arguments = json.loads(argv[1])
    result = _setup(**arguments) if argv[0] == "setup" else _report(**arguments)
    sys.stdout.write(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
