"""The real processes together: the web server, the discovery listener and the serial bridge, driven
over HTTP, UDP and a pseudo-terminal exactly as clients and machines drive them."""

import json
import socket
import urllib.request

import pytest
from django.conf import global_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from devices.choices import Protocol, Transport
from devices.simulators.serial_firmware import SerialFirmware
from tests.factories import stocked_device
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port, loopback_opener, wait_http
from vending_site.auth.permissions import VEND_CLIENT_GROUP

# sqlite: several processes write the one SQLite file, as `make run` deploys it; CI runs
# these on SQLite too (docs/development.md, "Test tiers").
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sqlite]

SERIAL_ID = "ESP32_USB_E2E001"
WIFI_ID = "ESP32_6CC8404FE03C"
WIFI_MAC = "6C:C8:40:4F:E0:3C"


def http(method: str, url: str, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with loopback_opener().open(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def stack():
    """Web, discovery and bridge as subprocesses, the serial machine on a pty."""
    firmware = SerialFirmware(device_id=SERIAL_ID)
    firmware_stop = firmware.start()
    web_port, udp_port = free_port(), free_port(2)
    web = start_command(
        "serve", "--host", "127.0.0.1", "--port", str(web_port), "--access-log", "/dev/null"
    )
    discovery = start_command("run_discovery", "--host", "127.0.0.1", "--port", str(udp_port))
    bridge = start_command("run_serial_bridge", "--port", firmware.path, "--reply-timeout", "3")
    processes = {"web": web, "discovery": discovery, "bridge": bridge}
    try:
        wait_http(f"http://127.0.0.1:{web_port}/health")
        read_until(discovery, "discovery listening")
        read_until(bridge, f"connected to {SERIAL_ID}")
        yield {"url": f"http://127.0.0.1:{web_port}", "udp": udp_port, "firmware": firmware}
    finally:
        codes = {name: stop(process) for name, process in processes.items()}
        firmware_stop.set()
        firmware.close()
    for name, (code, output) in codes.items():
        assert code == 0, f"{name} exited {code}:\n{output[-3000:]}"


def token(url: str, settings) -> str:
    # The server process hashes as production does; so must the user it checks.
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    kiosk = get_user_model().objects.create_user("kiosk", password="kiosk-password-1")
    kiosk.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])  # may vend
    status, body = http(
        "POST", f"{url}/api/v1/auth/token/", {"username": "kiosk", "password": "kiosk-password-1"}
    )
    assert status == 200, body
    return json.loads(body)["access"]


def test_a_machine_finds_the_server_and_vends_over_wifi_and_serial(stack, settings):
    url = stack["url"]
    stocked_device(SERIAL_ID, quantity=3, transport=Transport.SERIAL, protocol=Protocol.SERIAL)
    stocked_device(WIFI_ID, quantity=3)
    auth = {"Authorization": f"Bearer {token(url, settings)}"}

    # Discovery: the WiFi firmware's UDP request, then its /status probe.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(b"ESP32_DISCOVERY_REQUEST", ("127.0.0.1", stack["udp"]))
        assert sock.recvfrom(64)[0] == b"FLASK_SERVER:127.0.0.1"
    status, body = http("GET", f"{url}/status")
    assert status == 200 and "vending" in body and "status" in body

    # Serial: the bridge delivers at once; `wait` holds the answer until the vend settles.
    status, body = http("POST", f"{url}/api/v1/vend/2", {"device_id": SERIAL_ID, "wait": 8}, auth)
    assert status == 200, body
    assert json.loads(body)["state"] == "succeeded"
    assert stack["firmware"].received.count("VEND:2") == 1

    # WiFi: the machine registers, a client vends, the machine polls and confirms.
    status, _ = http(
        "POST",
        f"{url}/esp32/register",
        {"device_id": WIFI_ID, "ip_address": "127.0.0.1", "status": "online", "slots_available": 5},
    )
    assert status == 200
    status, body = http("POST", f"{url}/api/v1/vend/3", {"device_id": WIFI_ID}, auth)
    assert status == 202, body
    transaction_id = json.loads(body)["id"]
    status, body = http("GET", f"{url}/esp32/commands/{WIFI_ID}")
    assert status == 200 and json.loads(body)["command"] == "VEND" and json.loads(body)["slot"] == 3
    status, body = http("GET", f"{url}/esp32/commands/{WIFI_ID}")
    assert (status, body) == (200, "null")  # delivered once
    status, body = http(
        "POST",
        f"{url}/esp32/confirm",
        {
            "device_id": WIFI_MAC,
            "slot": 3,
            "success": True,
            "message": "Item dispensed successfully",
            "timestamp": 81234,
        },
    )
    assert status == 200 and json.loads(body)["state"] == "succeeded"
    status, body = http("GET", f"{url}/api/v1/transactions/{transaction_id}", headers=auth)
    assert json.loads(body)["state"] == "succeeded"
