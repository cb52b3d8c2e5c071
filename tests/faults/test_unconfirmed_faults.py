"""A WiFi machine that takes a vend and never confirms it, with real processes: the web
server and the sweeper as subprocesses, a simulated WiFi ESP32 polling over HTTP, the test
database. Ends with the accounting check (stock by vends and by ledger; outcomes from the
machine's own witness log)."""

import io
import time

import pytest
from django.core.management import call_command

from devices.models import Device
from devices.simulators.wifi_firmware import WifiFirmware
from inventory.models import StockMovement
from tests import accounting
from tests.factories import stocked_device
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port, wait_for, wait_http
from transactions.choices import TransactionState
from transactions.models import Transaction
from transactions.services import request_vend

pytestmark = pytest.mark.django_db(transaction=True)

CONFIRM_TIMEOUT = 2  # VEND_CONFIRM_TIMEOUT, seconds
QUEUE_TTL = 3  # VEND_QUEUE_TTL: the command's expiry passes while it is unconfirmed


def test_a_vend_never_confirmed_is_flagged_once_keeps_its_unit_and_is_never_redelivered(
    settings,
):
    settings.VEND_QUEUE_TTL = QUEUE_TTL  # for the vend queued in this process
    timeouts = {"VEND_CONFIRM_TIMEOUT": str(CONFIRM_TIMEOUT), "VEND_QUEUE_TTL": str(QUEUE_TTL)}
    port = free_port()
    web = start_command(
        "serve", "--host", "127.0.0.1", "--port", str(port), "--access-log", "/dev/null", **timeouts
    )
    sweeper = start_command("sweep_commands", "--every", "0.2", **timeouts)
    machine = WifiFirmware(
        index=7,
        seed=0xFA17,
        server_url=f"http://127.0.0.1:{port}",
        poll_interval=0.2,
        vend_seconds=0.05,
        after_confirm=0.1,
        confirms=False,  # takes the command, runs the motor, never POSTs /esp32/confirm
    )
    stocked_device(machine.device_id, quantity=3)
    machine_stop = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=40, process=web)
        read_until(sweeper, "sweeping every", timeout=40)
        machine_stop = machine.start()
        wait_for(lambda: machine.registered and machine.polls >= 1, 10, "the first poll")
        start = accounting.take_start()

        txn = request_vend(device=Device.objects.get(device_id=machine.device_id), slot_number=2)
        wait_for(lambda: machine.commands(), 5, "the machine to take the vend")
        wait_for(
            lambda: state_of(txn) == TransactionState.UNCONFIRMED,
            CONFIRM_TIMEOUT + 8,
            "the sweeper to flag the vend",
        )
        # Past the command's own expiry, with the sweeper at work and the machine polling:
        # neither an expiry nor a second flag nor a re-delivery may follow.
        polls = machine.polls
        time.sleep(QUEUE_TTL + 0.5)
        call_command("sweep_commands", stdout=io.StringIO())
        assert machine.polls >= polls + 5, "the machine stopped polling"
    finally:
        if machine_stop is not None:
            machine_stop.set()
            machine.thread.join(timeout=5)
        codes = {"web": stop(web), "sweeper": stop(sweeper)}
    assert all(code == 0 for code, _ in codes.values()), codes

    taken = [entry for entry in machine.commands() if entry["command"] == "VEND"]
    assert [entry["transaction_id"] for entry in taken] == [str(txn.pk)]  # delivered once
    assert machine.confirmations() == []
    assert state_of(txn) == TransactionState.UNCONFIRMED
    events = list(txn.events.values_list("to_state", flat=True))
    assert events == ["queued", "sent", "unconfirmed"], events
    assert list(StockMovement.objects.filter(transaction=txn).values_list("delta", flat=True)) == [
        -1
    ]  # reserved once, never returned
    accounting.assert_stock_adds_up(start, devices=[machine.device_id])
    outcomes = accounting.count_outcomes(
        accounting.accepted_vends([str(txn.pk)]), accounting.wifi_dispenses([machine])
    )
    print(outcomes.line())
    outcomes.check()


def state_of(txn: Transaction) -> str:
    return Transaction.objects.values_list("state", flat=True).get(pk=txn.pk)
