"""``manage.py serve`` (what ``make run`` starts: granian, ASGI) as a real process on the test
database: one port answers the firmware, the static files and the dashboard's WebSocket,
whose live events arrive; it stops cleanly the way honcho stops it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import transaction

from tests.integration.websocket import OP_TEXT, WebSocket
from tests.scratch import ROOT
from tests.scratch.children import child_env, drained, start_server, stop
from tests.scratch.net import Client, free_port, wait_http
from vending_site.live.events import publish

pytestmark = pytest.mark.django_db(transaction=True)

HONCHO_KILL_WAIT = 5  # seconds honcho waits after its SIGTERM before it sends SIGKILL


@pytest.fixture
def server():
    port = free_port()
    process = start_server(port, DASHBOARD_PUBLIC="true", LOG_LEVEL="INFO")
    process.port = port
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=process)
        yield process
    finally:
        code, output = stop(process)
        assert code == 0, output
        assert "Traceback" not in output, output


def test_one_port_serves_the_firmware_static_files_and_the_live_websocket(server):
    client = Client(f"http://127.0.0.1:{server.port}")
    try:
        status, body = client.request("GET", "/esp32/commands/ESP32_AABBCCDDEEFF")
        assert (status, body) == (200, b"null")
        status, icon = client.request("GET", "/static/dashboard/favicon.svg")
        assert status == 200 and icon.lstrip().startswith(b"<svg")
        status, _ = client.request("GET", "/health")
        assert status == 200
    finally:
        client.close()

    socket = WebSocket(server.port)
    try:
        assert socket.status == 101
        with transaction.atomic():
            publish("device", {"device_id": "ESP32_AABBCCDDEEFF", "marker": "over-granian"})
        # The consumer tails the outbox (no Redis here); the socket's own timeout bounds this.
        while True:
            opcode, payload = socket.receive()
            message = json.loads(payload)
            if opcode == OP_TEXT and message.get("payload", {}).get("marker") == "over-granian":
                break
        assert message["kind"] == "device"
    finally:
        socket.close()


def test_a_device_request_with_a_body_too_large_is_refused_with_413(server):
    client = Client(f"http://127.0.0.1:{server.port}")
    try:
        status, body = client.request(
            "POST",
            "/esp32/confirm",
            body={"device_id": "ESP32_AABBCCDDEEFF", "pad": "x" * 100_000},  # over 64 KiB
        )
    finally:
        client.close()
    assert status == 413, body[:200]
    assert json.loads(body)["code"] == "request_too_large"


def test_sigterm_to_its_process_group_with_a_websocket_open_stops_it_cleanly():
    """What honcho does on Ctrl-C: SIGTERM to the process group of each child (granian's main
    process and its worker at once), SIGKILL after HONCHO_KILL_WAIT seconds."""
    port = free_port()
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--access-log", "/dev/null"]
    process = drained(
        subprocess.Popen(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=child_env(DASHBOARD_PUBLIC="true"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=process)
        socket = WebSocket(port)
        assert socket.status == 101
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=HONCHO_KILL_WAIT)
        took = time.monotonic() - started
        socket.close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader, lines = process.drained
        reader.join(10)
    output = "".join(lines)
    assert code == 0, output
    assert took < HONCHO_KILL_WAIT, output
    assert "Traceback" not in output, output
