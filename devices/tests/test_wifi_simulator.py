"""The virtual WiFi ESP32 against the real server (``manage.py serve``, a subprocess), on
loopback."""

import http.client
import http.server
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from devices.choices import Protocol
from devices.models import Command, Device
from devices.simulators.wifi_firmware import (
    ServerNotAllowed,
    WifiFirmware,
    device_id_for,
    mac_for,
)
from inventory.models import Slot
from tests.factories import stocked_device
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port, wait_for
from transactions.choices import TransactionState
from transactions.models import Transaction
from transactions.services import request_vend

FAST = {"poll_interval": 0.2, "vend_seconds": 0.2, "after_confirm": 0.2}


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class Server:
    """``manage.py serve`` on a free loopback port, sharing the test database."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.process = start_command(
            "serve", "--host", "127.0.0.1", "--port", str(self.port), "--access-log", "/dev/null"
        )
        # Drain the pipe, so a chatty server never blocks on a full one.
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()

    def _read_output(self) -> None:
        for line in self.process.stdout:  # ends when the process closes its output
            self.output.append(line)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = http_get(self.port, "/health")
            if answer is not None and answer[0] == 200:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.close()
        raise AssertionError(f"server not healthy within {timeout} s:\n{''.join(self.output)}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._drain.join(timeout=5)


@pytest.fixture(scope="module")
def server(django_db_setup):
    served = Server()  # after django_db_setup, so it is given the test database
    try:
        served.wait_healthy()
        yield served
    finally:
        served.close()


@pytest.fixture
def simulators():
    """Start simulated devices; every one is stopped and joined at the end of the test."""
    started: list[tuple[WifiFirmware, threading.Event]] = []

    def start(**options) -> WifiFirmware:
        device = WifiFirmware(**options)
        started.append((device, device.start()))
        return device

    yield start
    for _device, stop_event in started:
        stop_event.set()
    for device, _stop_event in started:
        device.thread.join(timeout=10)
        assert not device.thread.is_alive(), f"{device.device_id} did not stop"


def state_of(txn: Transaction) -> str:
    return Transaction.objects.values_list("state", flat=True).get(pk=txn.pk)


def registered(device_id: str, protocol: str = Protocol.WIFI_V2) -> Callable[[], Device | None]:
    def check() -> Device | None:
        device = Device.objects.filter(device_id=device_id, protocol=protocol).first()
        return device if device is not None and device.is_online else None

    return check


# --- identity ------------------------------------------------------------------------------


def test_the_mac_is_locally_administered_and_derived_from_index_and_seed():
    assert mac_for(1) == "02:00:00:00:00:01"
    assert mac_for(0x123456, seed=0xABCD) == "02:AB:CD:12:34:56"
    assert device_id_for("02:00:00:00:00:01") == "ESP32_020000000001"
    device = WifiFirmware(index=7, server_url="http://127.0.0.1:5000")
    assert (device.mac, device.device_id) == ("02:00:00:00:00:07", "ESP32_020000000007")


@pytest.mark.parametrize(
    "options",
    [
        {"server_url": "http://192.0.2.10:5000"},
        {"server_url": "http://server.example:5000"},
        {"discovery": ("255.255.255.255", 12346)},
        {"discovery": ("192.0.2.255", 12346)},
    ],
)
def test_addresses_outside_loopback_are_refused_before_anything_is_sent(options):
    with pytest.raises(ServerNotAllowed):
        WifiFirmware(**options)


# --- against the real server ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_queued_vend_is_received_once_dispensed_and_confirmed_with_the_mac(server, simulators):
    stocked_device("ESP32_020000000001")
    sim = simulators(index=1, server_url=server.url, **FAST)
    device = wait_for(registered(sim.device_id), what="registration")

    txn = request_vend(device=device, slot_number=3)
    wait_for(lambda: state_of(txn) == TransactionState.SUCCEEDED, what="success")
    polls = sim.polls
    wait_for(lambda: sim.polls >= polls + 3, what="three more polls")  # nothing delivered twice

    command = Command.objects.get(transaction=txn)
    vends = [entry for entry in sim.commands() if entry["command"] == "VEND"]
    assert [(v["slot"], v["command_id"], v["acted"]) for v in vends] == [(3, command.pk, True)]
    wait_for(sim.confirmations, what="the witness log")  # it writes after the answer
    [confirmation] = sim.confirmations()
    assert confirmation["status"] == 200
    assert confirmation["command_id"] == command.pk
    body = confirmation["body"]
    assert list(body) == ["device_id", "slot", "success", "message", "timestamp"]
    assert body["device_id"] == "02:00:00:00:00:01"
    assert body["slot"] == 3
    assert body["success"] is True
    assert body["message"] == "Item dispensed successfully"
    assert 0 < body["timestamp"] < 60_000  # milliseconds since the device booted
    assert json.loads(confirmation["answer"])["state"] == TransactionState.SUCCEEDED
    assert Slot.objects.get(device=device, number=3).quantity == 4
    assert sim.registered and sim.errors == 0


@pytest.mark.django_db(transaction=True)
def test_an_unknown_device_registers_itself_with_its_own_id(server, simulators):
    sim = simulators(index=0xBEEF, seed=42, server_url=server.url, **FAST)
    device = wait_for(registered("ESP32_02002A00BEEF"), what="registration")
    assert device.mac_address == sim.mac == "02:00:2A:00:BE:EF"
    assert device.slot_count == 5
    assert device.ip_address == "127.0.0.1"


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_the_server_is_found_by_udp_discovery_then_the_status_probe(server, simulators):
    udp_port = free_port(socket.SOCK_DGRAM)
    discovery = start_command("run_discovery", "--host", "127.0.0.1", "--port", str(udp_port))
    try:
        read_until(discovery, f"discovery listening on udp 127.0.0.1:{udp_port}")
        sim = simulators(
            index=3,
            server_url=None,
            discovery=("127.0.0.1", udp_port),
            http_port=server.port,
            retry_interval=0.2,
            **FAST,
        )
        wait_for(registered(sim.device_id), what="registration after discovery")
    finally:
        code, output = stop(discovery)
    assert sim.base_url == server.url
    assert not sim.gave_up
    assert code == 0, output
    assert re.search(r"answered [1-9]", output), output


def test_without_a_discovery_answer_the_device_gives_up_after_its_attempts(simulators):
    silent = free_port(socket.SOCK_DGRAM)  # nothing listens there
    sim = simulators(
        server_url=None,
        discovery=("127.0.0.1", silent),
        find_attempts=2,
        discovery_wait=0.1,
        retry_interval=0.05,
    )
    sim.thread.join(timeout=5)
    assert not sim.thread.is_alive()
    assert sim.gave_up and sim.base_url is None and sim.polls == 0


@pytest.mark.django_db(transaction=True)
def test_the_documented_variant_polls_with_the_header_and_can_report_a_failure(server, simulators):
    stocked_device("ESP32_020000000002")
    sim = simulators(index=2, server_url=server.url, documented=True, failure_rate=1.0, **FAST)
    device = wait_for(
        registered(sim.device_id, Protocol.WIFI_DOCUMENTED), what="documented registration"
    )
    wait_for(lambda: sim.polls >= 2, what="idle polls")  # NO_COMMAND is an idle answer

    txn = request_vend(device=device, slot_number=1)
    wait_for(lambda: state_of(txn) == TransactionState.FAILED, what="failure")

    assert [(c["command"], c["slot"]) for c in sim.commands()] == [("VEND", 1)]
    wait_for(sim.confirmations, what="the witness log")  # it writes after the answer
    [confirmation] = sim.confirmations()
    assert confirmation["status"] == 200
    assert confirmation["body"]["device_id"] == "02:00:00:00:00:02"
    assert confirmation["body"]["success"] is False
    assert Slot.objects.get(device=device, number=1).quantity == 5  # the unit went back
    assert device.firmware_version == "1.0.0"
    assert sim.errors == 0


def test_a_device_survives_a_server_that_is_down(simulators):
    sim = simulators(server_url=f"http://127.0.0.1:{free_port()}", poll_interval=0.05)
    # A poll is counted before it is sent and its error after it fails: wait for both, or
    # a busy machine reads the fifth poll's count before its error (5 errors, not 6).
    wait_for(
        lambda: sim.polls >= 5 and sim.errors >= 6, timeout=5, what="polls against a closed port"
    )
    assert sim.thread.is_alive()
    assert not sim.registered
    assert sim.errors >= 6  # the registration and every poll
    assert sim.witness == []


# --- against a scripted peer: what the real server never sends ---------------------------------


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers polls from a script (then ``null``) and records every request."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, str, dict]]):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script = list(script)
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.lock = threading.Lock()


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: str, headers: dict | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append(("GET", self.path, dict(self.headers), b""))
            step = self.server.script.pop(0) if self.server.script else (200, "null", {})
        if self.path.startswith("/esp32/commands/"):
            self._answer(*step)
        else:
            self._answer(200, '{"status": "elsewhere"}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.requests.append(("POST", self.path, dict(self.headers), body))
        self._answer(200, '{"status": "ok"}')


def test_only_vend_with_slot_1_to_5_is_acted_on_and_redirects_are_not_followed(simulators):
    peer = ScriptedServer(
        [
            (200, '{"command": "VEND", "slot": 6, "command_id": 1}', {}),
            (200, '{"command": "VEND", "slot": 0}', {}),
            (200, '{"command": "VEND", "slot": "2"}', {}),
            (200, '{"command": "RESET"}', {}),
            (200, "[1, 2]", {}),
            (302, "", {"Location": "/elsewhere"}),
            (500, "oops", {}),
            (200, "", {}),
            (200, '{"command": "VEND", "slot": 2, "command_id": 7, "extra": true}', {}),
        ]
    )
    threading.Thread(target=peer.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        sim = simulators(
            index=9,
            server_url=f"http://127.0.0.1:{peer.server_address[1]}",
            **{**FAST, "poll_interval": 0.05},
        )
        wait_for(lambda: sim.confirmations(), what="the one vend")
        sim.max_polls = sim.polls  # stop here
        sim.thread.join(timeout=5)
    finally:
        peer.shutdown()
        peer.server_close()

    received = [(c["command"], c.get("slot"), c["acted"]) for c in sim.commands()]
    assert received == [
        ("VEND", 6, False),
        ("VEND", 0, False),
        ("VEND", "2", False),
        ("RESET", None, False),  # v2.1 acts only on VEND
        (None, None, False),  # a JSON answer that is not an object
        ("VEND", 2, True),
    ]
    wait_for(sim.confirmations, what="the witness log")  # it writes after the answer
    [confirmation] = sim.confirmations()
    assert confirmation["command_id"] == 7
    paths = [(method, path) for method, path, _headers, _body in peer.requests]
    assert paths[0] == ("POST", "/esp32/register")
    assert ("GET", "/elsewhere") not in paths
    assert paths.count(("POST", "/esp32/confirm")) == 1
    register = json.loads(peer.requests[0][3])
    assert register == {
        "device_id": "ESP32_020000000009",
        "ip_address": "127.0.0.1",
        "status": "online",
        "slots_available": 5,
    }
    assert list(register) == ["device_id", "ip_address", "status", "slots_available"]
    assert peer.requests[0][2]["Content-Type"] == "application/json"
    confirm = next(body for method, path, _h, body in peer.requests if path == "/esp32/confirm")
    assert json.loads(confirm)["device_id"] == "02:00:00:00:00:09"
