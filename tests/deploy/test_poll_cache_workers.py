"""Two granian workers keep the same idle machine (devices/poll_cache.py), each in its own
memory: a vend queued by a third process (this one) reaches the machine at its next poll,
whichever worker answers it, exactly once; the notice goes through the shared Redis."""

import json
import os

import pytest
from django.core.cache import caches
from django.utils import timezone

from devices.choices import CommandKind, CommandState
from devices.models import Command, Device
from tests.scratch import databases
from tests.scratch.net import request
from transactions.commands import queue_command

from .test_web_server import start_web  # noqa: F401 - the fixture

REDIS_URL = os.environ.get("SCRATCH_REDIS_URL") or databases.redis_url(9)
POLLS = 24  # each on its own connection, so both workers answer some


@pytest.fixture
def shared_cache(settings):
    """This process' cache is the servers' (same Redis, same key prefix), as another
    process of the deployment would have it."""
    databases.flush_redis(REDIS_URL)
    settings.CACHES = {
        "default": {
            "BACKEND": "vending_site.backends.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "vending",
        }
    }
    yield
    caches["default"].close()
    databases.flush_redis(REDIS_URL)


def poll(url: str, device_id: str) -> bytes:
    status, _headers, body = request(url, "GET", f"/esp32/commands/{device_id}")
    assert status == 200, body
    return json.dumps(body).encode() if body is not None else b"null"


@pytest.mark.django_db(transaction=True)
def test_a_vend_queued_while_two_workers_keep_the_machine_is_delivered_once_at_the_next_poll(
    start_web,  # noqa: F811
    shared_cache,
    online_device,
):
    server = start_web(workers=2, REDIS_URL=REDIS_URL)
    # Seen just now, as a machine that kept polling while the server started would be: on
    # a loaded machine the start took over 5 s, and the polls' presence refreshes, written
    # behind (devices/presence.py), were not in the database yet when the vend was queued.
    Device.objects.filter(pk=online_device.pk).update(last_seen=timezone.now())
    device_id = online_device.device_id
    assert {poll(server.url, device_id) for _ in range(POLLS)} == {b"null"}  # both keep it

    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=3)
    answers = [poll(server.url, device_id) for _ in range(POLLS)]

    assert json.loads(answers[0]) == {**json.loads(answers[0]), "command": "VEND", "slot": 3}
    assert set(answers[1:]) == {b"null"}  # handed over once
    command.refresh_from_db()
    assert command.state == CommandState.SENT
    assert Command.objects.filter(state=CommandState.SENT).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_vend_whose_announcement_was_lost_reaches_the_machine_after_reconciliation(
    start_web,  # noqa: F811
    shared_cache,
    online_device,
):
    """Kept for a minute, reconciled every 0.2 s: only the workers' reconciliation can drop
    the kept answer of a machine whose vend nobody announced."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.scratch.net import wait_for

    server = start_web(
        workers=2,
        REDIS_URL=REDIS_URL,
        DEVICE_POLL_CACHE_SECONDS="60",
        DEVICE_POLL_RECONCILE_SECONDS="0.2",
    )
    device_id = online_device.device_id
    assert {poll(server.url, device_id) for _ in range(POLLS)} == {b"null"}  # both keep it
    now = timezone.now()
    Command.objects.bulk_create(  # no post_save: as if its publisher died after the commit
        [
            Command(
                device=online_device,
                kind=CommandKind.VEND,
                slot=2,
                created_at=now,
                expires_at=now + timedelta(seconds=30),
            )
        ]
    )

    delivered = wait_for(
        lambda: (answer := poll(server.url, device_id)) != b"null" and answer,
        timeout=10,
        what="the vend delivered",
    )

    assert json.loads(delivered)["slot"] == 2
    assert {poll(server.url, device_id) for _ in range(POLLS)} == {b"null"}  # once
    assert Command.objects.get().state == CommandState.SENT
