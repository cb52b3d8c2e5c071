"""``GET /health``: can this server do its job?

200 ``healthy`` when every check passes. 503 ``unhealthy`` when an essential one fails (the
database, its migrations): nothing can be vended, and a load balancer should take the worker
out. 200 ``degraded`` when only the channel layer (Redis) fails: polls, confirmations and
vends go on (throttles fail open, live pages catch up from the outbox), so taking every
worker out because Redis is down would stop vending for nothing; the failing check is named
for monitoring.
"""

import asyncio
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

CHANNEL_LAYER_TIMEOUT = 2.0


def check_database() -> str:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def check_migrations() -> str:
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        raise RuntimeError(f"{len(plan)} migration(s) not applied; run manage.py migrate")
    return "ok"


def check_channel_layer() -> str:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")

    async def round_trip() -> None:
        channel = await layer.new_channel()
        token = uuid.uuid4().hex
        await layer.send(channel, {"type": "health.check", "token": token})
        message = await asyncio.wait_for(layer.receive(channel), CHANNEL_LAYER_TIMEOUT)
        if message.get("token") != token:
            raise RuntimeError("the channel layer returned another message")

    async_to_sync(round_trip)()
    return "ok"


CHECKS = {
    "database": check_database,
    "migrations": check_migrations,
    "channel_layer": check_channel_layer,
}
# A failure of any other check leaves the server working, with less: "degraded".
ESSENTIAL = frozenset({"database", "migrations"})


def run_checks() -> tuple[str, dict[str, str]]:
    """("healthy" | "degraded" | "unhealthy", each check's "ok" or "error: ...")."""
    results, failed = {}, set()
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:  # noqa: BLE001 - a health check reports, it does not crash
            failed.add(name)
            results[name] = f"error: {exc}"
    if failed & ESSENTIAL:
        return "unhealthy", results
    return ("degraded" if failed else "healthy"), results


class HealthView(APIView):
    permission_classes = (AllowAny,)
    authentication_classes = ()

    def get(self, request: Request) -> Response:
        status, checks = run_checks()
        return Response(
            {"status": status, "checks": checks}, status=503 if status == "unhealthy" else 200
        )
