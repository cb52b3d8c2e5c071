"""A virtual USB-serial ESP32 on a pseudo-terminal, answering like firmware v1.1.

The server side opens ``path`` exactly as it would open ``/dev/ttyUSB0``. The simulator
keeps per-slot stock so it can answer ``ERROR:SLOT_EMPTY``, and can be told to fail, be
slow, stay mute, reboot mid-vend or emit bytes that are not UTF-8, for tests.

It keeps its own record of every vend it handled (``vends``: slot and outcome), the
machine's side of the story that fault tests compare with the server's; ``dispensed()``
are the units that came out.
"""

import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from devices.protocol import MAX_SERIAL_COMMAND

DEFAULT_ID = "ESP32_USB_VENDING"


@dataclass
class SerialFirmware:
    device_id: str = DEFAULT_ID
    plain: bool = False  # the documented variant: undecorated lines
    slots: int = 5
    # What the banner and the IDENTIFY answer say after SLOTS_AVAILABLE: (None: ``slots``);
    # for tests of a board whose banner is corrupt.
    slots_text: str | None = None
    stock: dict[int, int] | None = None  # None: never runs out
    failure_rate: float = 0.0
    latency: float = 0.0  # seconds between the command and its result line
    slot_latency: dict[int, float] = field(default_factory=dict)  # per slot, overrides latency
    idle_interval: float = 10.0
    boot_delay: float = 0.0
    seed: int | None = None
    on_vend: Callable[[int, str], None] | None = None
    # Fault injection, for tests: answer VEND with nothing, or reboot instead of answering.
    mute: bool = False
    reboot_on_vend: bool = False
    garbage_before_result: bool = False
    received: list[str] = field(default_factory=list)
    received_at: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, line)
    vends: list[dict] = field(default_factory=list)  # every VEND handled, with its outcome

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no newline translation: a wire, not a terminal
        self.path = os.ttyname(self._slave)
        self._started = time.monotonic()
        self._buffer = b""
        self._closed = False
        self._lock = threading.Lock()

    # --- the wire -------------------------------------------------------------------

    def write_line(self, text: str) -> None:
        self.write_raw(text.encode("utf-8") + b"\r\n")

    def write_raw(self, data: bytes) -> None:
        with self._lock:
            if not self._closed:
                os.write(self._master, data)

    def unplug(self) -> None:
        """Pull the cable: the server's next read or write fails."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._master)
                os.close(self._slave)

    # --- behaviour --------------------------------------------------------------------

    def banner(self) -> None:
        self._started = time.monotonic()
        if self.plain:
            lines = [
                f"DEVICE_ID:{DEFAULT_ID}",  # the firmware's banner is generic
                "DEVICE_TYPE:USB",
                "FIRMWARE_VERSION:1.1",
                f"SLOTS_AVAILABLE:{self._slots_said()}",
                f"STATUS_OK:READY:{self.slots}_SLOTS",
            ]
        else:
            lines = [
                "🚀 ESP32 USB Vending Machine starting...",
                f"DEVICE_ID:{DEFAULT_ID}",  # the firmware's banner is generic
                "DEVICE_TYPE:USB",
                "COMM_METHOD:SERIAL",
                "FIRMWARE_VERSION:1.1",
                f"SLOTS_AVAILABLE:{self._slots_said()}",
                "✅ System ready - send HELP for commands",
            ]
        for line in lines:
            self.write_line(line)

    def _slots_said(self) -> str:
        return str(self.slots) if self.slots_text is None else self.slots_text

    def handle(self, line: str) -> None:
        command = line.strip()
        if not command:
            return
        self.received.append(command)
        self.received_at.append((time.monotonic(), command))
        if len(command) > MAX_SERIAL_COMMAND:
            self._error("Command too long", "COMMAND_TOO_LONG")
            return
        upper = command.upper()
        if not self.plain:
            self.write_line(f"📨 Received command: {command}")
        if upper.startswith("VEND:"):
            self._vend(upper[5:])
        elif upper in ("STATUS", "PING"):
            self._status()
        elif upper in ("DISCOVER", "IDENTIFY"):
            self._identify()
        elif upper == "RESET":
            self.write_line("🔄 Restarting..." if not self.plain else "RESETTING")
            time.sleep(0.05)
            self.banner()
        elif upper == "HELP":
            for text in ("Commands: VEND:<1-5>, STATUS, PING, IDENTIFY, RESET, HELP, QUICK",):
                self.write_line(text)
        elif upper == "QUICK":
            self.write_line("⚡ Quick test: all slots OK" if not self.plain else "QUICK_OK")
        else:
            self._error(f"Unknown command '{command}'", "UNKNOWN_COMMAND")

    def _error(self, human: str, plain: str) -> None:
        self.write_line(f"ERROR:{plain}" if self.plain else f"❌ Error: {human}")

    def _status(self) -> None:
        if self.plain:
            self.write_line(f"STATUS_OK:READY:{self.slots}_SLOTS")
            return
        uptime = int(time.monotonic() - self._started)
        for line in ("✅ STATUS:ONLINE", f"SLOTS:{self.slots}", "READY:YES", f"UPTIME:{uptime}"):
            self.write_line(line)

    def _identify(self) -> None:
        lines = [
            "DEVICE_RESPONSE:ESP32_USB_VENDING",
            f"DEVICE_ID:{self.device_id}",
            "DEVICE_TYPE:USB",
            "COMM_METHOD:SERIAL",
            "FIRMWARE_VERSION:1.1",
            f"SLOTS_AVAILABLE:{self._slots_said()}",
            "STATUS:READY",
        ]
        if not self.plain:
            lines.append("-" * 40)
        for line in lines:
            self.write_line(line)

    def _vend(self, argument: str) -> None:
        try:
            slot = int(argument)
        except ValueError:
            slot = 0
        if not 1 <= slot <= self.slots:
            self._error(f"Invalid slot number. Must be 1-{self.slots}", "INVALID_SLOT")
            return
        if not self.plain:
            self.write_line(f"🎯 Vending from slot {slot}...")
        if self.mute:
            self._report(slot, "no answer")
            return
        if self.reboot_on_vend:
            self._report(slot, "rebooted")
            self.banner()
            return
        delay = self.slot_latency.get(slot, self.latency)
        if delay:
            time.sleep(delay)
        if self.garbage_before_result:
            self.write_raw(b"\xff\xfe\x80 noise \xc3\x28\r\n")
        if self.stock is not None and self.stock.get(slot, 0) <= 0:
            self.write_line("ERROR:SLOT_EMPTY" if self.plain else "❌ ERROR:SLOT_EMPTY")
            self._report(slot, "slot empty")
            return
        if self._random.random() < self.failure_rate:
            self.write_line(f"VEND_FAILED:{slot}" if self.plain else f"❌ VEND_FAILED:{slot}")
            self._report(slot, "failed")
            return
        if self.stock is not None:
            self.stock[slot] -= 1
        if self.plain:
            self.write_line(f"VEND_SUCCESS:{slot}")
        else:
            self.write_line(f"✅ VEND_SUCCESS:{slot}")
            self.write_line(f"⚡ Activating motor for slot {slot}")
            self.write_line("-" * 40)
        self._report(slot, "success")

    def _report(self, slot: int, outcome: str) -> None:
        self.vends.append({"slot": slot, "outcome": outcome, "at": time.monotonic()})
        if self.on_vend is not None:
            self.on_vend(slot, outcome)

    def dispensed(self) -> list[dict]:
        """The vends whose unit came out (the motor ran and the sensor saw it)."""
        return [vend for vend in list(self.vends) if vend["outcome"] == "success"]

    # --- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Boot, then answer commands until ``stop`` is set or the cable is pulled."""
        if self.boot_delay:
            time.sleep(self.boot_delay)
            self._discard_input()  # a board in reset hears nothing sent meanwhile
        self.banner()
        last_activity = time.monotonic()
        while not stop.is_set() and not self._closed:
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
            except (OSError, ValueError):
                return
            if ready:
                try:
                    chunk = os.read(self._master, 4096)
                except OSError:
                    return
                self._buffer += chunk
                while b"\n" in self._buffer:
                    raw, self._buffer = self._buffer.split(b"\n", 1)
                    self.handle(raw.decode("utf-8", errors="replace").strip("\r"))
                last_activity = time.monotonic()
            elif time.monotonic() - last_activity >= self.idle_interval:
                self.write_line(
                    "IDLE" if self.plain else "💤 System idle - waiting for commands..."
                )
                last_activity = time.monotonic()

    def _discard_input(self) -> None:
        while select.select([self._master], [], [], 0)[0]:
            try:
                os.read(self._master, 4096)
            except OSError:
                return

    def start(self) -> threading.Event:
        """Run in a daemon thread; returns the event that stops it."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), daemon=True, name="serial-sim").start()
        return stop

    def close(self) -> None:
        self.unplug()
