"""``manage.py simulate_esp32``: real processes, a real pseudo-terminal, real loopback sockets."""

import re
import time

import pytest
import serial
from django.core.management import CommandError, call_command

from devices.models import Device
from tests.factories import stocked_device
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port, wait_for
from transactions.choices import TransactionState
from transactions.models import Transaction
from transactions.services import request_vend

from .test_wifi_simulator import server  # noqa: F401 - the fixture


def read_serial_until(port: serial.Serial, needle: bytes, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        seen += port.read(256)
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} not read within {timeout} s; got {seen!r}")


@pytest.mark.system
def test_serial_mode_prints_its_pty_and_answers_like_the_usb_firmware():
    process = start_command("simulate_esp32", "--serial", "--duration", "2")
    try:
        line = read_until(process, "serial device ready at")
        path = re.search(r"serial device ready at (\S+)", line).group(1)
        with serial.Serial(path, 115200, timeout=0.1) as port:
            banner = read_serial_until(port, b"SLOTS_AVAILABLE:5\r\n")  # opening it reboots it
            assert b"DEVICE_ID:ESP32_USB_VENDING\r\n" in banner
            port.write(b"VEND:1\n")
            assert b"VEND_SUCCESS:1\r\n" in read_serial_until(port, b"VEND_SUCCESS:1")
        output, _ = process.communicate(timeout=15)  # --duration ends it
    finally:
        if process.poll() is None:
            stop(process)
    assert process.returncode == 0, output
    assert "ESP32_USB_VENDING slot 1: dispensed" in output


@pytest.mark.system
def test_sigterm_stops_it_cleanly_even_while_the_server_is_unreachable():
    nowhere = f"http://127.0.0.1:{free_port()}"
    process = start_command(
        "simulate_esp32", "--wifi", "--server", nowhere, "--poll-interval", "0.1"
    )
    read_until(process, "simulating 1 WiFi device(s)")
    time.sleep(0.3)  # a few failed polls
    code, output = stop(process)
    assert code == 0, output
    assert "simulator stopped: 1 device(s), 0 vend(s) confirmed" in output


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_wifi_mode_prints_one_line_per_vend(server):  # noqa: F811
    stocked_device("ESP32_020000000002")
    process = start_command(
        "simulate_esp32",
        "--wifi",
        "--count",
        "2",
        "--server",
        server.url,
        "--poll-interval",
        "0.2",
        "--vend-seconds",
        "0.2",
        "--after-confirm",
        "0.2",
        "--duration",
        "8",
    )
    try:
        read_until(process, "simulating 2 WiFi device(s) (firmware v2.1)")
        read_until(process, f"ESP32_020000000002 registered at {server.url}")
        device = wait_for(
            lambda: Device.objects.filter(
                device_id="ESP32_020000000002", last_seen__isnull=False
            ).first(),
            what="registration",
        )
        txn = request_vend(device=device, slot_number=4)
        read_until(process, "ESP32_020000000002 slot 4: dispensed", timeout=8)
        assert Transaction.objects.get(pk=txn.pk).state == TransactionState.SUCCEEDED
        assert Device.objects.filter(device_id="ESP32_020000000001").exists()
    finally:
        code, output = stop(process)
    assert code == 0, output


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "exactly one of --wifi or --serial"),
        (("--wifi", "--serial"), "exactly one of --wifi or --serial"),
        (("--wifi", "--server", "http://192.0.2.1:5000"), "not a loopback address"),
        (("--wifi", "--discovery", "127.0.0.1"), "HOST:PORT"),
        (("--serial", "--duration", "0"), "--duration must be positive"),
        (("--wifi", "--failure-rate", "0.5"), "needs --documented"),
    ],
)
def test_bad_arguments_are_refused_with_a_command_error(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_esp32", *args)
