"""The serial bridge against a virtual ESP32 on a real pseudo-terminal."""

import termios
import threading
import time

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from devices.choices import CommandState, Direction, PortRequest, Protocol, Transport
from devices.models import Command, CommunicationLog, Device, SerialPort
from devices.serial_bridge import Bridge
from devices.serial_link import LinkConfig, SerialLink, port_device_id
from devices.services import PortReport, request_port
from devices.simulators.serial_firmware import SerialFirmware
from inventory.models import Slot
from tests.factories import stocked_device as shared_stocked_device
from tests.scratch.net import wait_for
from transactions.choices import TransactionState
from transactions.models import Transaction
from transactions.services import request_vend

pytestmark = pytest.mark.django_db(transaction=True)

DEVICE_ID = "ESP32_USB_A1B2C3"
FAST = LinkConfig(reply_timeout=1.0, banner_wait=0.3, identify_timeout=1.0, ping_interval=0.5)


class Rig:
    """A simulator and a bridge link, both in threads, torn down in order."""

    def __init__(self, config: LinkConfig = FAST, **firmware):
        self.firmware = SerialFirmware(**{"device_id": DEVICE_ID, **firmware})
        self.sim_stop = self.firmware.start()
        self.stop = threading.Event()
        self.said: list[str] = []
        self.link = SerialLink(self.firmware.path, config, self.stop, say=self.said.append)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.link.run()
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        try:
            wait_for(lambda: any("connected to" in line for line in self.said), what="handshake")
        except BaseException:
            self.__exit__()  # a link that never connects must not outlive its test
            raise
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        self.sim_stop.set()
        self.firmware.close()
        assert not self.thread.is_alive(), "the bridge did not stop"


def stocked_device(quantity: int = 5) -> Device:
    return shared_stocked_device(
        DEVICE_ID, quantity=quantity, transport=Transport.SERIAL, protocol=Protocol.SERIAL
    )


def state_of(txn: Transaction) -> str:
    return Transaction.objects.values_list("state", flat=True).get(pk=txn.pk)


def settled(txn: Transaction, *states: str):
    return lambda: state_of(txn) in states


def ledger_matches(slot: Slot) -> bool:
    slot.refresh_from_db()
    return (slot.movements.aggregate(total=Sum("delta"))["total"] or 0) == slot.quantity


def test_the_bridge_registers_the_device_from_its_identify_answer():
    with Rig():
        device = Device.objects.get(device_id=DEVICE_ID)
        assert device.transport == Transport.SERIAL
        assert device.protocol == Protocol.SERIAL
        assert device.firmware_version == "1.1"
        assert device.is_online
        assert device.slots.count() == 5


def test_a_vend_succeeds_and_keeps_the_unit():
    device = stocked_device()
    with Rig() as rig:
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=3)
        wait_for(settled(txn, TransactionState.SUCCEEDED), what="success")
        assert rig.firmware.received.count("VEND:3") == 1
    slot = Slot.objects.get(device=device, number=3)
    assert slot.quantity == 4
    assert ledger_matches(slot)
    lines = CommunicationLog.objects.filter(device=device)
    assert lines.filter(direction=Direction.OUT, message="VEND:3").count() == 1
    assert lines.filter(direction=Direction.IN, message__contains="VEND_SUCCESS:3").exists()


def test_the_plain_variant_is_understood_too():
    device = stocked_device()
    with Rig(plain=True):
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=2)
        wait_for(settled(txn, TransactionState.SUCCEEDED), what="success")


def test_a_failed_vend_returns_the_unit():
    device = stocked_device()
    with Rig(failure_rate=1.0):
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(txn, TransactionState.FAILED), what="failure")
    slot = Slot.objects.get(device=device, number=1)
    assert slot.quantity == 5
    assert ledger_matches(slot)


def test_a_slot_the_machine_finds_empty_is_zeroed_through_the_ledger_and_flagged():
    device = stocked_device()
    with Rig(stock={1: 0, 2: 5, 3: 5, 4: 5, 5: 5}):
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(txn, TransactionState.FAILED), what="failure")
        slot = Slot.objects.get(device=device, number=1)
        wait_for(lambda: Slot.objects.get(pk=slot.pk).quantity == 0, what="slot zeroed")
    slot.refresh_from_db()
    assert slot.needs_attention
    assert ledger_matches(slot)
    assert slot.movements.filter(reason="slot_empty").count() == 1


def test_no_reply_makes_the_vend_unconfirmed_and_it_is_never_sent_again():
    device = stocked_device()
    with Rig(mute=True) as rig:
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=4)
        wait_for(settled(txn, TransactionState.UNCONFIRMED), what="unconfirmed")
        time.sleep(1.0)  # several more bridge iterations
        assert rig.firmware.received.count("VEND:4") == 1
    assert Slot.objects.get(device=device, number=4).quantity == 4  # still reserved
    assert Command.objects.get(transaction=txn).state == CommandState.SENT


def test_a_reboot_banner_mid_vend_makes_the_vend_unconfirmed():
    device = stocked_device()
    with Rig(reboot_on_vend=True) as rig:
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=5)
        wait_for(settled(txn, TransactionState.UNCONFIRMED), what="unconfirmed")
        assert rig.firmware.received.count("VEND:5") == 1
    reason = txn.events.filter(to_state=TransactionState.UNCONFIRMED).get().note
    assert "rebooted" in reason


def test_bytes_that_are_not_utf8_are_survived_and_logged():
    device = stocked_device()
    with Rig(garbage_before_result=True):
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=2)
        wait_for(settled(txn, TransactionState.SUCCEEDED), what="success")
    assert CommunicationLog.objects.filter(message__contains="\ufffd").exists()


def test_pulling_the_cable_mid_vend_makes_it_unconfirmed_and_the_device_offline():
    device = stocked_device()
    config = LinkConfig(reply_timeout=5.0, banner_wait=0.3, identify_timeout=1.0)
    with Rig(config=config, latency=3.0) as rig:
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(txn, TransactionState.SENT), what="delivery")
        rig.firmware.unplug()
        wait_for(settled(txn, TransactionState.UNCONFIRMED), what="unconfirmed")
        wait_for(lambda: not Device.objects.get(pk=device.pk).is_online, what="offline")


def test_a_cable_pulled_while_the_vend_line_drains_is_a_lost_link_not_a_bug():
    """pyserial's flush() is tcdrain(): on a port whose device just went away it raises
    termios.error (EIO), which is no OSError. Found by tests/faults: it was reported as an
    "unexpected error" with a traceback."""
    import serial

    device = stocked_device()
    firmware = SerialFirmware(device_id=DEVICE_ID)
    sim_stop = firmware.start()

    def opener(*args, **kwargs):
        port = serial.serial_for_url(*args, **kwargs)
        write = port.write

        def write_then_unplug(data):
            written = write(data)
            if data.startswith(b"VEND"):
                port.flush = lambda: (_ for _ in ()).throw(termios.error(5, "EIO"))
            return written

        port.write = write_then_unplug
        return port

    stop, said = threading.Event(), []
    link = SerialLink(firmware.path, FAST, stop, say=said.append, opener=opener)
    thread = threading.Thread(target=lambda: (link.run(), connection.close()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: any("connected to" in line for line in said), what="handshake")
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(txn, TransactionState.UNCONFIRMED), what="unconfirmed")
        wait_for(lambda: any("link lost" in line for line in said), what="link lost")
    finally:
        stop.set()
        thread.join(10)
        sim_stop.set()
        firmware.close()
    assert not any("unexpected error" in line for line in said), said


def test_the_bridge_reconnects_after_the_port_comes_back():
    device = stocked_device()
    firmware = SerialFirmware(device_id=DEVICE_ID)
    path = firmware.path
    firmware.close()  # the port exists no more: the bridge keeps trying
    stop = threading.Event()
    said: list[str] = []
    link = SerialLink(path, FAST, stop, say=said.append)
    thread = threading.Thread(target=lambda: (link.run(), connection.close()), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert not link.connected.is_set()
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert Device.objects.filter(pk=device.pk, last_seen__isnull=True).exists()


def test_stopping_mid_vend_waits_for_the_result():
    device = stocked_device()
    config = LinkConfig(reply_timeout=3.0, banner_wait=0.3, identify_timeout=1.0)
    with Rig(config=config, latency=0.5) as rig:
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=3)
        wait_for(settled(txn, TransactionState.SENT), what="delivery")
        rig.stop.set()  # SIGTERM arrives while the motor runs
        rig.thread.join(5)
    assert state_of(txn) == TransactionState.SUCCEEDED


def test_a_port_without_a_device_id_gets_one_from_its_path():
    assert port_device_id("/dev/ttyUSB0") == "ESP32_SERIAL_TTYUSB0"
    assert port_device_id("/dev/pts/7") == "ESP32_SERIAL_7"


def test_a_quiet_device_is_pinged_and_stays_online():
    device = stocked_device()
    with Rig(idle_interval=60) as rig:
        Device.objects.filter(pk=device.pk).update(last_seen=timezone.now())
        time.sleep(1.5)
        assert "PING" in rig.firmware.received


class BridgeRig:
    """The whole bridge (supervisor + links) in a thread, with a simulator on a pty."""

    def __init__(self, explicit=True, usb_id=None, config=FAST, **firmware):
        self.firmware = SerialFirmware(**{"device_id": DEVICE_ID, **firmware})
        self.sim_stop = self.firmware.start()
        self.stop = threading.Event()
        self.said: list[str] = []
        path = self.firmware.path
        vid, pid = usb_id or (None, None)
        self.bridge = Bridge(
            explicit=[path] if explicit else [],
            config=config,
            stop=self.stop,
            say=self.said.append,
            # The USB bus cannot exist here: the scan reports the pty as the board would be.
            scan=lambda: [] if explicit else [PortReport(path=path, vid=vid, pid=pid)],
            rescan_seconds=0.5,
            control_interval=0.2,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.bridge.run()
        finally:
            connection.close()

    def port(self) -> SerialPort | None:
        return SerialPort.objects.filter(path=self.firmware.path).first()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)
        self.sim_stop.set()
        self.firmware.close()
        assert not self.thread.is_alive(), "the bridge did not stop"


def test_the_bridge_reports_an_explicit_port_as_open_with_its_device():
    with BridgeRig() as rig:
        wait_for(lambda: rig.port() and rig.port().is_open, what="port open")
        port = rig.port()
        assert port.device.device_id == DEVICE_ID
        assert port.present
    assert not rig.port().is_open  # closed on shutdown


def test_staff_can_disconnect_and_reconnect_a_port_within_a_second():
    with BridgeRig() as rig:
        wait_for(lambda: rig.port() and rig.port().is_open, what="port open")

        request_port(path=rig.firmware.path, request=PortRequest.DISCONNECT)
        wait_for(lambda: not rig.port().is_open, timeout=2.0, what="port closed")
        wait_for(lambda: not Device.objects.get(device_id=DEVICE_ID).is_online, what="offline")

        request_port(path=rig.firmware.path, request=PortRequest.CONNECT)
        wait_for(lambda: rig.port().is_open, what="port reopened")


def test_auto_detect_links_a_port_with_an_esp32_usb_id_only():
    with BridgeRig(explicit=False, usb_id=(0x10C4, 0xEA60)) as rig:
        wait_for(lambda: rig.port() and rig.port().is_open, what="port open")
        assert rig.port().likely_esp32


def test_auto_detect_leaves_other_serial_devices_alone_until_staff_connect_them():
    with BridgeRig(explicit=False, usb_id=(0x067B, 0x2303)) as rig:
        wait_for(lambda: rig.port() is not None, what="port reported")
        time.sleep(1.0)
        assert not rig.port().is_open
        assert not rig.port().likely_esp32
        request_port(path=rig.firmware.path, request=PortRequest.CONNECT)
        wait_for(lambda: rig.port().is_open, what="port open on request")


def test_a_broken_operator_output_never_costs_a_vend_result():
    device = stocked_device()

    def broken_say(text):
        if "vend slot" in text:
            raise BrokenPipeError("stdout is closed")

    with Rig() as rig:
        rig.link.say = broken_say
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=2)
        wait_for(settled(txn, TransactionState.SUCCEEDED), what="success")


def test_on_postgresql_a_new_command_wakes_the_bridge_instead_of_waiting_for_its_look():
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite relies on the 50 ms look")
    device = stocked_device()
    slow_look = LinkConfig(
        reply_timeout=3.0, banner_wait=0.3, identify_timeout=1.0, poll_interval=5.0
    )
    with BridgeRig(config=slow_look) as rig:
        wait_for(lambda: rig.port() and rig.port().is_open, what="port open")
        wait_for(rig.bridge.waker.listening.is_set, what="listening")
        time.sleep(0.2)  # let the link settle into its (slow) wait
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        # Woken: settled well before the 5 s look came round.
        wait_for(settled(txn, TransactionState.SUCCEEDED), timeout=4.5, what="success")


def test_on_postgresql_the_bridge_survives_its_database_connections_being_cut(caplog):
    if connection.vendor != "postgresql":
        pytest.skip("cuts PostgreSQL backends; SQLite has no server to restart")
    device = stocked_device()
    with BridgeRig() as rig:
        wait_for(lambda: rig.port() and rig.port().is_open, what="port open")
        first = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(first, TransactionState.SUCCEEDED), what="first vend")

        # What a database restart does to every client: its server-side sessions end.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] >= 1

        second = request_vend(device=Device.objects.get(pk=device.pk), slot_number=2)
        wait_for(settled(second, TransactionState.SUCCEEDED), timeout=15, what="vend after")
        assert rig.firmware.received.count("VEND:2") == 1
    assert "database unavailable" in caplog.text  # the cut really reached the bridge


def test_a_late_result_settles_its_own_vend_never_the_next_one():
    device = stocked_device()
    with Rig(slot_latency={1: 1.6}) as rig:  # slot 1 answers after the 1 s reply timeout
        slow = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(slow, TransactionState.UNCONFIRMED), what="unconfirmed")
        quick = request_vend(device=Device.objects.get(pk=device.pk), slot_number=4)

        wait_for(settled(slow, TransactionState.SUCCEEDED), what="late success")
        wait_for(settled(quick, TransactionState.SUCCEEDED), what="the next vend")
        # Nothing new went out before the machine had answered a PING after the late result.
        sent = rig.firmware.received
        assert sent.index("VEND:4") > sent.index("PING", sent.index("VEND:1"))
    assert "after the vend was flagged unconfirmed" in slow.events.last().note
    assert Slot.objects.get(device=device, number=1).quantity == 4
    assert Slot.objects.get(device=device, number=4).quantity == 4


def test_a_late_slot_empty_empties_the_right_slot():
    device = stocked_device()
    stock = {1: 0, 2: 5, 3: 5, 4: 5, 5: 5}
    with Rig(slot_latency={1: 1.6}, stock=stock):
        slow = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
        wait_for(settled(slow, TransactionState.UNCONFIRMED), what="unconfirmed")
        quick = request_vend(device=Device.objects.get(pk=device.pk), slot_number=4)

        wait_for(settled(slow, TransactionState.FAILED), what="late slot empty")
        wait_for(settled(quick, TransactionState.SUCCEEDED), what="the next vend")
        wait_for(lambda: Slot.objects.get(device=device, number=1).quantity == 0, what="zeroed")
    assert Slot.objects.get(device=device, number=4).quantity == 4
    assert Slot.objects.get(device=device, number=1).needs_attention
    assert not Slot.objects.get(device=device, number=4).needs_attention


def test_an_http_poll_never_takes_a_command_meant_for_the_usb_link(client):
    device = stocked_device()
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now())
    request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)

    response = client.get(f"/esp32/commands/{DEVICE_ID}")

    assert response.status_code == 403
    assert response.json()["code"] == "device_linked_by_serial"
    assert Command.objects.get().state == CommandState.QUEUED


def test_nothing_over_http_changes_a_usb_machines_transport_slots_or_vends(client):
    """Finding 2 of the device-trust review: one anonymous register turned a USB machine
    into a WiFi one, whose vends HTTP polls then took and confirmed."""
    device = stocked_device()
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now())
    txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=1)
    Command.objects.filter(transaction=txn).update(state=CommandState.SENT)
    body = {"device_id": DEVICE_ID, "ip_address": "10.0.0.9", "slots_available": 1}

    registered = client.post("/esp32/register", body, content_type="application/json")
    confirmed = client.post(
        "/esp32/confirm",
        {"device_id": DEVICE_ID, "slot": 1, "success": True},
        content_type="application/json",
    )

    assert registered.status_code == confirmed.status_code == 403
    device.refresh_from_db()
    assert (device.transport, device.protocol) == (Transport.SERIAL, Protocol.SERIAL)
    assert device.slot_count == 5
    txn.refresh_from_db()
    assert txn.state == TransactionState.QUEUED  # not settled by what HTTP said
    assert Command.objects.get().state == CommandState.SENT


def test_a_board_that_boots_late_is_asked_again_and_named_by_its_answer():
    with Rig(boot_delay=1.3) as rig:  # misses the first IDENTIFY, as a board in reset does
        assert Device.objects.filter(device_id=DEVICE_ID).exists()
        assert rig.firmware.received.count("IDENTIFY") >= 1
    assert not Device.objects.filter(device_id="ESP32_USB_VENDING").exists()  # the banner's id


@pytest.mark.parametrize("slots_text", ["²", "7" * 5000], ids=["superscript", "5000-digits"])
def test_a_board_whose_banner_slot_count_is_not_a_number_links_and_vends(slots_text, settings):
    # '²'.isdigit() is true but int('²') raises, and int() refuses 5000 digits: the link
    # used to fail its handshake and reopen the port every few seconds, never linking.
    settings.DEVICE_DEFAULT_SLOTS = 4
    with Rig(slots_text=slots_text) as rig:
        device = Device.objects.get(device_id=DEVICE_ID)
        assert device.slot_count == 4  # the default, not whatever the banner said
        stocked_device()
        txn = request_vend(device=Device.objects.get(pk=device.pk), slot_number=3)
        wait_for(settled(txn, TransactionState.SUCCEEDED), what="success")
        assert rig.firmware.received.count("VEND:3") == 1
    assert not any("unexpected error" in line for line in rig.said)
    assert sum("connected to" in line for line in rig.said) == 1  # linked once, never again
    notes = CommunicationLog.objects.filter(message__contains="is not a slot count")
    assert notes.count() == 1  # the banner and the IDENTIFY answer both said it: noted once
    assert len(notes.get().message) < 200


def test_an_identify_answer_that_is_not_a_device_id_is_ignored_and_the_port_still_links():
    with Rig(device_id="ESP32_" + "Ä" * 80) as rig:  # not an id: letters beyond ASCII, too long
        assert Device.objects.filter(device_id=port_device_id(rig.firmware.path)).exists()
    assert not any("unexpected error" in line for line in rig.said)
    assert sum("connected to" in line for line in rig.said) == 1
    assert CommunicationLog.objects.filter(message__contains="not a device id").count() == 1


def test_an_auto_detected_port_whose_device_never_answers_is_not_linked():
    import os as _os

    master, slave = _os.openpty()  # a USB-serial gadget with an ESP32's USB id, but mute
    path = _os.ttyname(slave)
    stop = threading.Event()
    bridge = Bridge(
        explicit=[],
        config=FAST,
        stop=stop,
        say=lambda text: None,
        scan=lambda: [PortReport(path=path, vid=0x1A86, pid=0x7523)],
        rescan_seconds=0.5,
        control_interval=0.2,
    )
    thread = threading.Thread(target=lambda: (bridge.run(), connection.close()), daemon=True)
    thread.start()
    try:
        time.sleep(4.5)  # three unanswered IDENTIFYs
        assert not Device.objects.exists()
        assert not SerialPort.objects.get(path=path).is_open
    finally:
        stop.set()
        thread.join(15)
        _os.close(master)
        _os.close(slave)
    assert not thread.is_alive()
