"""A stranger on the machines' network against a real server with default settings.

The server (``manage.py serve``) runs as shipped; an approved WiFi machine (the
firmware simulator) polls from 127.0.0.1, the address it is bound to; an attacker speaks
the same protocol from 127.0.0.2, another host on the LAN, while a kiosk vends. Every
attack of the device-trust review's findings 1, 2, 4 and 5 is tried: take a queued vend,
fake its outcome, shrink the machine's slots, turn it into another transport, spend its
request allowance with HEAD and GET floods, invent machines by the hundred, flood the
confirmation endpoint. Each must be refused or bounded, and the machine must dispense every
vend exactly once (tests/accounting.py).
"""

import http.client
import json
import threading
import time

import pytest
from django.utils import timezone

from devices.choices import Transport
from devices.models import CommunicationLog, Device
from devices.simulators.wifi_firmware import WifiFirmware, mac_for
from tests.accounting import accepted_vends, count_outcomes, wifi_dispenses
from tests.factories import stocked_device
from tests.scratch.children import start_server, stop
from tests.scratch.net import free_port, wait_http
from transactions.models import Transaction
from transactions.services import request_vend

pytestmark = pytest.mark.django_db(transaction=True)

ATTACKER = "127.0.0.2"
VENDS = 4
ATTACK_SECONDS = 12.0
# The attack goes on past ATTACK_SECONDS until it has met its own limit (a 429), at most this
# much longer: on a loaded machine 12 s may hold fewer requests than the limit lets through.
ATTACK_GRACE_SECONDS = 40.0
DEVICE_THROTTLE = "40/min"
LOG_RATE = 60  # DEVICE_LOG_RATE, the server's default


class Attacker:
    """Plain HTTP from 127.0.0.2: what anyone on the LAN can send to port 5000."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[str, int, str]] = []
        self.taken: list[dict] = []  # commands handed to the attacker: must stay empty

    @staticmethod
    def label(method: str, path: str, body: dict | None) -> str:
        """``POST /esp32/confirm as 02:00:...``: the request and the machine it claims."""
        return f"{method} {path} as {(body or {}).get('device_id', '')}"

    def send(self, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=5, source_address=(ATTACKER, 0)
        )
        try:
            payload = json.dumps(body) if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode("utf-8", errors="replace")
        except OSError as exc:  # a slow answer on a loaded machine: counted, not fatal
            self.answers.append((self.label(method, path, body), 0, repr(exc)))
            return 0, ""
        finally:
            connection.close()
        self.answers.append((self.label(method, path, body), response.status, text[:200]))
        if response.status == 200 and text.strip() not in ("", "null", "NO_COMMAND"):
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and answer.get("command"):
                self.taken.append(answer)
        return response.status, text

    def run(self, machine: str, mac: str, serial: str, stop_at: float) -> None:
        """Round after round of every attack, until ``stop_at`` and a first 429, or
        ``ATTACK_GRACE_SECONDS`` after ``stop_at`` (bounded: at most 400 rounds)."""
        for round_number in range(400):
            now = time.monotonic()
            limited = any(status == 429 for _what, status, _text in self.answers)
            if now >= stop_at and (limited or now >= stop_at + ATTACK_GRACE_SECONDS):
                return
            # Finding 1: take the queued vend, fake its outcome, shrink the machine.
            for _ in range(3):
                self.send("GET", f"/esp32/commands/{machine}")
            for slot in range(1, 6):
                self.send(
                    "POST", "/esp32/confirm", {"device_id": mac, "slot": slot, "success": True}
                )
            self.send(
                "POST",
                "/esp32/register",
                {"device_id": machine, "ip_address": ATTACKER, "slots_available": 1},
            )
            # Finding 2: turn the USB machine into a WiFi one and take its vends.
            self.send("POST", "/esp32/register", {"device_id": serial, "slots_available": 5})
            self.send("GET", f"/esp32/commands/{serial}")
            # Finding 4: spend the machine's allowance.
            for _ in range(5):
                self.send("HEAD", f"/esp32/commands/{machine}")
            # Finding 5: invent machines, flood the log.
            for n in range(3):
                invented = f"ESP32_EE{round_number:05X}{n:05X}"
                self.send("GET", f"/esp32/commands/{invented}")
                self.send(
                    "POST", "/esp32/confirm", {"device_id": invented, "slot": 1, "success": True}
                )
            self.send("GET", "/status")
            # A pause between rounds: the test is about what the server lets through, not
            # its speed; a saturated one-process server on a busy CI machine would answer
            # the real machine after its 3 s timeout and lose a confirmation to load alone.
            time.sleep(0.05)


def test_a_lan_attacker_takes_fakes_and_blocks_nothing_and_every_vend_comes_out_once(settings):
    firmware = WifiFirmware(
        index=1, seed=77, poll_interval=0.5, after_confirm=0.5, vend_seconds=0.3
    )
    machine = stocked_device(firmware.device_id, quantity=VENDS + 2, bound_address="127.0.0.1")
    Device.objects.filter(pk=machine.pk).update(last_seen=timezone.now())
    serial = stocked_device(
        "ESP32_USB_LAN001", quantity=3, transport=Transport.SERIAL, protocol="serial"
    )
    port = free_port()
    # A per-device limit the attacker's GETs for the machine's id alone pass several times
    # over, above the machine's own polls (one every 2 s, as the firmware polls).
    web = start_server(
        port,
        DEVICE_THROTTLE=DEVICE_THROTTLE,
    )
    firmware.server_url = f"http://127.0.0.1:{port}"
    stop_machine = threading.Event()
    attacker = Attacker(port)
    accepted = []
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        firmware.start(stop_machine)
        stop_at = time.monotonic() + ATTACK_SECONDS
        attack = threading.Thread(
            target=attacker.run,
            args=(firmware.device_id, mac_for(1, 77), serial.device_id, stop_at),
            daemon=True,
        )
        attack.start()
        time.sleep(1.0)  # the attack is under way before the first vend
        for n in range(VENDS):
            machine.refresh_from_db()
            txn = request_vend(device=machine, slot_number=n % 5 + 1)
            accepted.append(str(txn.pk))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if Transaction.objects.get(pk=txn.pk).state in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
        attack.join(timeout=ATTACK_SECONDS + ATTACK_GRACE_SECONDS + 10)
    finally:
        stop_machine.set()
        code, output = stop(web)
    assert code == 0, output[-3000:]

    states = [Transaction.objects.get(pk=pk).state for pk in accepted]
    assert states == ["succeeded"] * VENDS
    outcomes = count_outcomes(accepted_vends(accepted), wifi_dispenses([firmware]))
    outcomes.check()  # nothing lost, doubled or unexpected
    assert attacker.taken == []
    statuses = {status for _what, status, _text in attacker.answers}
    assert statuses <= {0, 200, 403, 405, 429}, attacker.answers[-20:]  # 0: timed out
    # Everything the attacker sent as the machine was refused: polls, confirmations of
    # either outcome, registrations. A 200 there would be a stolen or faked vend.
    mac = mac_for(1, 77)
    as_machine = [
        (what, status)
        for what, status, _text in attacker.answers
        if firmware.device_id in what or what.endswith(f" as {mac}")
    ]
    assert len(as_machine) > 50
    assert {status for _what, status in as_machine} <= {0, 403, 405, 429}, as_machine[-10:]
    assert 429 in statuses  # the attacker met its own limits, never the machine's
    machine.refresh_from_db()
    serial.refresh_from_db()
    assert (machine.slot_count, str(machine.bound_address)) == (5, "127.0.0.1")
    assert machine.moved_to == ATTACKER  # staff see who tried
    assert serial.transport == Transport.SERIAL
    pending = Device.objects.filter(approved=False).count()
    assert pending <= settings.DEVICE_PENDING_LIMIT
    # At most DEVICE_LOG_RATE rows a minute from one address (the test spans two minutes at
    # most), plus the machine's own rows.
    from_attacker = CommunicationLog.objects.filter(remote_addr=ATTACKER).count()
    assert from_attacker <= 3 * LOG_RATE
    assert len(attacker.answers) > 200  # the attack really ran
