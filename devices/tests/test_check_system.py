"""``check_system``: every part of an install checked for real, with a hint per problem.

The network checks talk to real processes (``run_discovery``, ``serve``) on loopback ports
chosen free by the kernel; the failing cases use ports where nothing listens.
"""

import json
import os
import re
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from devices.models import SerialPort
from devices.system_checks import (
    Status,
    check_discovery,
    check_serial_ports,
    check_web,
)
from tests.factories import DeviceFactory
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port, wait_http

LOOPBACK = "127.0.0.1"
NETWORK_CHECKS = ("--skip", "serial", "--skip", "discovery", "--skip", "web")


def check_system(*args: str) -> tuple[str, CommandError | None]:
    """What the command printed, and the CommandError it ended with (None when it passed)."""
    out = StringIO()
    try:
        call_command("check_system", *args, stdout=out, no_color=True)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


@pytest.fixture
def discovery_port():
    """A real ``run_discovery`` on a free loopback UDP port."""
    process = start_command("run_discovery", "--host", LOOPBACK, "--port", "0")
    try:
        line = read_until(process, "discovery listening on udp")
        yield int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    finally:
        code, output = stop(process)
    assert code == 0, output


@pytest.fixture
def web_url():
    """A real ``serve`` on a free loopback TCP port, answering ``/health``."""
    port = free_port(socket.SOCK_STREAM)
    process = start_command("serve", "--host", LOOPBACK, "--port", str(port))
    url = f"http://{LOOPBACK}:{port}/health"
    try:
        wait_http(url, timeout=30, process=process)
        yield url
    finally:
        stop(process)


# --- the whole command ------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_every_check_passes_against_running_discovery_and_web_server(discovery_port, web_url):
    DeviceFactory(last_seen=timezone.now())
    DeviceFactory(last_seen=None)
    args = ("--discovery-port", str(discovery_port), "--web-url", web_url)

    output, error = check_system(*args, "--format", "json")

    assert error is None, output
    report = json.loads(output)
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert report["ok"] is True
    assert statuses.pop("serial") in {"pass", "warn"}  # no USB board on a test machine
    assert statuses == {
        "database": "pass",
        "migrations": "pass",
        "channel_layer": "pass",
        "discovery": "pass",
        "web": "pass",
        "devices": "pass",
        "notifier": "pass",
    }
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "FLASK_SERVER:127.0.0.1" in details["discovery"]
    assert details["devices"] == "1 of 2 online"

    table, error = check_system(*args)

    assert error is None, table
    assert table.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert "FAIL" not in table
    assert re.search(r"^discovery\s+PASS\s", table, re.MULTILINE)
    assert re.search(r"^web\s+PASS\s", table, re.MULTILINE)


@pytest.mark.django_db
def test_nothing_listening_fails_discovery_and_web_with_hints_and_a_nonzero_exit():
    DeviceFactory(last_seen=timezone.now())
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)

    output, error = check_system(
        "--discovery-port", str(udp), "--web-url", f"http://{LOOPBACK}:{tcp}/health"
    )

    assert error is not None
    assert "2 check(s) failed: discovery, web" in str(error)
    assert re.search(rf"^discovery\s+FAIL\s+udp 127\.0\.0\.1:{udp}", output, re.MULTILINE)
    assert re.search(r"^web\s+FAIL\s", output, re.MULTILINE)
    assert re.search(r"^database\s+PASS\s", output, re.MULTILINE)
    assert "hint (discovery): is manage.py run_discovery running?" in output
    assert "hint (web): is manage.py serve" in output


@pytest.mark.django_db
def test_json_output_parses_and_carries_each_failure_with_its_hint():
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)

    output, error = check_system(
        "--format",
        "json",
        "--skip",
        "serial",
        "--discovery-port",
        str(udp),
        "--web-url",
        f"http://{LOOPBACK}:{tcp}/health",
    )

    assert error is not None
    report = json.loads(output)
    assert report["ok"] is False
    assert report["skipped"] == ["serial"]
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == [
        "database",
        "migrations",
        "channel_layer",
        "discovery",
        "web",
        "devices",
        "notifier",
    ]
    assert checks["discovery"]["status"] == "fail"
    assert "run_discovery" in checks["discovery"]["hint"]
    assert checks["web"]["status"] == "fail"
    assert checks["devices"]["status"] == "warn"  # no device registered


@pytest.mark.django_db
def test_skipped_checks_are_not_run_and_are_listed():
    DeviceFactory(last_seen=timezone.now())

    output, error = check_system(*NETWORK_CHECKS)

    assert error is None, output
    names = re.findall(r"^(\w+)\s+(?:PASS|WARN|FAIL)\s", output, re.MULTILINE)
    assert names == ["database", "migrations", "channel_layer", "devices", "notifier"]
    assert "skipped: serial, discovery, web" in output


@pytest.mark.django_db
def test_a_warning_alone_exits_zero_and_still_prints_its_hint():
    DeviceFactory(last_seen=timezone.now() - timedelta(hours=1))

    output, error = check_system(*NETWORK_CHECKS)

    assert error is None
    assert re.search(r"^devices\s+WARN\s+0 of 1 online", output, re.MULTILINE)
    assert "hint (devices):" in output


@pytest.mark.django_db
def test_deliveries_nobody_sends_warn_with_a_hint_to_start_the_notifier():
    from vending_site.notify.events import emit
    from vending_site.notify.models import Delivery, Endpoint

    DeviceFactory(last_seen=timezone.now())
    Endpoint.objects.create(name="erp", url="https://erp.example/", event_types=["vend.failed"])
    emit("vend.failed", {"id": "1"}, subject="vend:1")
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))

    output, error = check_system(*NETWORK_CHECKS)

    assert error is None  # a warning
    assert re.search(r"^notifier\s+WARN\s+1 deliveries overdue", output, re.MULTILINE)
    assert "hint (notifier): is manage.py run_notifier running?" in output


def test_an_unknown_check_name_is_refused():
    with pytest.raises(CommandError, match="invalid choice: 'dns'"):
        call_command("check_system", "--skip", "dns", stdout=StringIO())


def test_a_web_url_that_is_not_http_is_refused():
    with pytest.raises(CommandError, match="--web-url must be an http"):
        call_command("check_system", "--web-url", "file:///etc/passwd", stdout=StringIO())


# --- serial ports -----------------------------------------------------------------------


def port_info(device: str, vid: int | None, pid: int | None) -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, description="test port")


@pytest.mark.django_db
def test_no_esp32_usb_id_among_the_ports_is_a_warning_with_a_hint():
    result = check_serial_ports(comports=lambda: [port_info("/dev/ttyS0", None, None)])

    assert result.status == Status.WARN
    assert "no ESP32 USB serial port among 1" in result.detail
    assert "run_serial_bridge --list" in result.hint


@pytest.mark.django_db
def test_no_esp32_usb_id_passes_while_the_bridge_has_a_machine_linked_on_a_port():
    device = DeviceFactory(device_id="ESP32_AABBCCDDEEFF")
    SerialPort.objects.create(path="/dev/pts/7", is_open=True, device=device)
    SerialPort.objects.create(path="/dev/pts/8", is_open=True)  # open, no machine yet
    SerialPort.objects.create(path="/dev/ttyS0", is_open=False, device=device)  # closed

    result = check_serial_ports(comports=lambda: [port_info("/dev/ttyS0", None, None)])

    assert result.status == Status.PASS
    assert result.detail == (
        "the serial bridge has 1 port(s) open with a machine: /dev/pts/7 (ESP32_AABBCCDDEEFF)"
    )


@pytest.mark.django_db
def test_an_open_port_with_no_machine_linked_still_warns():
    SerialPort.objects.create(path="/dev/pts/8", is_open=True)

    result = check_serial_ports(comports=lambda: [])

    assert result.status == Status.WARN


def test_an_esp32_port_that_opens_passes():
    controller, terminal = os.openpty()
    try:
        path = os.ttyname(terminal)
        result = check_serial_ports(comports=lambda: [port_info(path, 0x10C4, 0xEA60)])
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.status == Status.PASS
    assert path in result.detail


def test_an_esp32_port_that_cannot_be_opened_fails_with_the_error_and_the_dialout_hint():
    def refuse(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    result = check_serial_ports(
        comports=lambda: [port_info("/dev/ttyUSB0", 0x1A86, 0x7523)], opener=refuse
    )

    assert result.status == Status.FAIL
    assert "/dev/ttyUSB0: [Errno 13] Permission denied" in result.detail
    assert "dialout" in result.hint


def test_a_vanished_esp32_port_fails_with_the_os_error():
    result = check_serial_ports(comports=lambda: [port_info("/dev/ttyNOPE9", 0x303A, 0x1001)])

    assert result.status == Status.FAIL
    assert "No such file or directory" in result.detail


# --- discovery and web on loopback, against stand-ins -----------------------------------


def test_a_udp_answer_that_is_not_a_discovery_reply_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind((LOOPBACK, 0))
        fake.settimeout(2)

        def echo_garbage() -> None:
            try:
                _data, peer = fake.recvfrom(64)
                fake.sendto(b"HELLO", peer)
            except OSError:
                pass

        thread = threading.Thread(target=echo_garbage, daemon=True)
        thread.start()
        result = check_discovery(port=fake.getsockname()[1], timeout=0.5)
        thread.join(3)

    assert result.status == Status.FAIL
    assert "no answer in 0.5 s" in result.detail


class HealthStandIn(BaseHTTPRequestHandler):
    status = 503
    body = b""

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_stand_in():
    """An HTTP server on a free loopback port answering with whatever the test sets."""
    server = ThreadingHTTPServer((LOOPBACK, 0), HealthStandIn)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_unhealthy_server_fails_naming_the_failing_checks(health_stand_in):
    HealthStandIn.status = 503
    HealthStandIn.body = json.dumps(
        {"status": "unhealthy", "checks": {"database": "ok", "channel_layer": "error: boom"}}
    ).encode()
    url = f"http://{LOOPBACK}:{health_stand_in.server_address[1]}/health"

    result = check_web(url=url)

    assert result.status == Status.FAIL
    assert "HTTP 503 unhealthy (channel_layer: error: boom)" in result.detail
    assert "database" not in result.detail


def test_a_200_that_is_not_a_health_report_fails(health_stand_in):
    HealthStandIn.status = 200
    HealthStandIn.body = b"<html>some other server</html>"
    url = f"http://{LOOPBACK}:{health_stand_in.server_address[1]}/health"

    result = check_web(url=url)

    assert result.status == Status.FAIL
    assert "HTTP 200, not a health report" in result.detail
