"""Faults on the USB-serial path, with real processes: ``run_serial_bridge`` and the sweeper
as subprocesses, a virtual ESP32 on a real pseudo-terminal, the test database.

Each test ends with the accounting check: every slot's stock explained by its vends and by
its ledger, and no vend lost, dispensed twice or dispensed unasked, counted from the
machine's own record of what it dispensed.
"""

import os
import signal
import subprocess
import time

import pytest

from devices.choices import Protocol, Transport
from devices.models import Device
from devices.simulators.serial_firmware import SerialFirmware
from tests import accounting
from tests.factories import stocked_device
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import wait_for
from transactions.choices import TransactionState
from transactions.models import Transaction, TransactionEvent
from transactions.services import request_vend

# sqlite: several processes write the one SQLite file, as `make run` deploys it; CI runs
# these on SQLite too (docs/development.md, "Test tiers").
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sqlite]

DEVICE_ID = "ESP32_USB_FAULT01"
REPLY_TIMEOUT = "2.5"
CONFIRM_TIMEOUT = "3"  # the sweeper's VEND_CONFIRM_TIMEOUT, above the bridge's reply timeout


def start_bridge(path: str) -> subprocess.Popen:
    """The bridge on ``path``; the caller keeps it (to stop it) before waiting for it."""
    return start_command("run_serial_bridge", "--port", path, "--reply-timeout", REPLY_TIMEOUT)


def connected(bridge: subprocess.Popen) -> None:
    # Bounded, and generous: on a busy two-core machine starting Django takes seconds.
    read_until(bridge, f"connected to {DEVICE_ID}", timeout=40)


def vend(slot: int) -> Transaction:
    return request_vend(device=Device.objects.get(device_id=DEVICE_ID), slot_number=slot)


def state_of(txn: Transaction) -> str:
    return Transaction.objects.values_list("state", flat=True).get(pk=txn.pk)


def reached(txn: Transaction, state: str):
    return lambda: state_of(txn) == state


def unconfirmed_note(txn: Transaction) -> str:
    return (
        TransactionEvent.objects.filter(transaction=txn, to_state=TransactionState.UNCONFIRMED)
        .values_list("note", flat=True)
        .first()
        or ""
    )


def check_accounting(start, txns, firmwares) -> accounting.Outcomes:
    accounting.assert_stock_adds_up(start, devices=[DEVICE_ID])
    outcomes = accounting.count_outcomes(
        accounting.accepted_vends([str(t.pk) for t in txns]),
        accounting.serial_dispenses(firmwares),
    )
    print(outcomes.line())
    outcomes.check()
    return outcomes


def ended_cleanly(**processes: subprocess.Popen) -> None:
    codes = {name: stop(process) for name, process in processes.items()}
    bad = {name: output[-3000:] for name, (code, output) in codes.items() if code != 0}
    assert not bad, bad


def test_a_bridge_killed_mid_vend_leaves_it_unconfirmed_and_never_sends_it_again():
    firmware = SerialFirmware(device_id=DEVICE_ID, latency=1.5)  # the motor runs 1.5 s
    firmware_stop = firmware.start()
    stocked_device(DEVICE_ID, quantity=3, transport=Transport.SERIAL, protocol=Protocol.SERIAL)
    processes = {}
    try:
        # Started together: each process takes a while to import Django on a busy machine.
        processes["sweeper"] = start_command(
            "sweep_commands", "--every", "0.2", VEND_CONFIRM_TIMEOUT=CONFIRM_TIMEOUT
        )
        bridge = processes["bridge"] = start_bridge(firmware.path)
        read_until(processes["sweeper"], "sweeping every", timeout=40)
        connected(bridge)
        start = accounting.take_start()

        first = vend(1)
        wait_for(lambda: "VEND:1" in firmware.received, what="the VEND line at the machine")
        os.kill(bridge.pid, signal.SIGKILL)  # while the motor runs
        bridge.wait(timeout=5)
        bridge.stdout.close()
        del processes["bridge"]

        processes["bridge"] = start_bridge(firmware.path)
        connected(processes["bridge"])
        wait_for(reached(first, TransactionState.UNCONFIRMED), 15, "the sweep to flag the vend")
        second = vend(2)  # the restarted bridge works, and sends only the new vend
        wait_for(reached(second, TransactionState.SUCCEEDED), 10, "the next vend")
        time.sleep(0.3)  # a re-send, if any, would show now
    finally:
        firmware_stop.set()
        firmware.close()
        if processes:
            ended_cleanly(**processes)

    assert firmware.received.count("VEND:1") == 1, firmware.received
    assert firmware.received.count("VEND:2") == 1, firmware.received
    assert state_of(first) == TransactionState.UNCONFIRMED
    assert "no confirmation within" in unconfirmed_note(first)
    outcomes = check_accounting(start, [first, second], [firmware])
    assert outcomes.dispensed == 2


def test_a_port_closed_mid_vend_makes_it_unconfirmed_and_the_bridge_reconnects(tmp_path):
    """The device side of the pty goes away (cable pulled) while the motor runs; the port's
    path (a symlink, as udev's /dev/serial/by-id/... is) comes back with a new board."""
    port = tmp_path / "ttyVENDING0"
    firmware = SerialFirmware(device_id=DEVICE_ID, latency=2.0)
    firmware_stop = firmware.start()
    port.symlink_to(firmware.path)
    stocked_device(DEVICE_ID, quantity=3, transport=Transport.SERIAL, protocol=Protocol.SERIAL)
    returned = returned_stop = None
    bridge = None
    try:
        bridge = start_bridge(str(port))
        connected(bridge)
        start = accounting.take_start()

        first = vend(3)
        wait_for(lambda: "VEND:3" in firmware.received, what="the VEND line at the machine")
        firmware.unplug()
        port.unlink()
        read_until(bridge, "link lost", timeout=10)
        wait_for(reached(first, TransactionState.UNCONFIRMED), 5, "the bridge to flag the vend")
        wait_for(lambda: not Device.objects.get(device_id=DEVICE_ID).is_online, 5, "offline")
        assert bridge.poll() is None, "the bridge exited when the device went away"

        returned = SerialFirmware(device_id=DEVICE_ID)
        returned_stop = returned.start()
        port.symlink_to(returned.path)
        read_until(bridge, f"connected to {DEVICE_ID}", timeout=30)
        second = vend(3)
        wait_for(reached(second, TransactionState.SUCCEEDED), 10, "a vend after the reconnect")
        time.sleep(0.3)
    finally:
        for sim, sim_stop in ((firmware, firmware_stop), (returned, returned_stop)):
            if sim is not None:
                sim_stop.set()
                sim.close()
        if bridge is not None:
            ended_cleanly(bridge=bridge)

    assert firmware.received.count("VEND:3") == 1, firmware.received
    assert returned.received.count("VEND:3") == 1, returned.received  # only the new vend
    assert "serial link was lost mid-vend" in unconfirmed_note(first)  # what staff see
    check_accounting(start, [first, second], [firmware, returned])
