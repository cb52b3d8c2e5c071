"""Overload shedding on the production server (granian's WSGI workers, deploy/web.py), over
real sockets: a poll nginx says arrived longer ago than DEVICE_POLL_SHED_AFTER is answered
idle and counted on /metrics; the vend it did not get goes out at the next poll, once."""

import time

import pytest

from devices.choices import CommandKind, CommandState
from devices.models import Command
from tests.scratch.net import Client, request, wait_for
from transactions.commands import queue_command

from .test_web_server import start_web  # noqa: F401 - the fixture

SHED_LINE = 'vending_polls_shed_total{dialect="wifi_v2",reason="late"}'


def shed_count(url: str) -> float:
    client = Client(url, headers={"Connection": "close"})
    try:
        _status, _headers, body = client.exchange("GET", "/metrics")
    finally:
        client.close()
    for line in body.decode().splitlines():
        if line.startswith(SHED_LINE):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.django_db(transaction=True)
def test_a_late_poll_is_answered_idle_and_counted_and_the_next_poll_gets_the_vend_once(
    start_web,  # noqa: F811
    online_device,
):
    server = start_web(workers=1, DEVICE_POLL_CACHE_SECONDS="0")
    path = f"/esp32/commands/{online_device.device_id}"
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=2)
    before = shed_count(server.url)

    late = request(server.url, "GET", path, headers={"X-Request-Start": f"t={time.time() - 2}"})
    command.refresh_from_db()
    state_after_late = command.state
    delivered = request(server.url, "GET", path)
    again = request(server.url, "GET", path)

    assert late[0] == 200 and late[2] is None  # the body `null`
    assert state_after_late == CommandState.QUEUED
    assert delivered[0] == 200 and delivered[2]["command"] == "VEND" and delivered[2]["slot"] == 2
    assert again[2] is None
    assert Command.objects.filter(state=CommandState.SENT).count() == 1
    wait_for(lambda: shed_count(server.url) == before + 1, 10, "the shed poll on /metrics")
