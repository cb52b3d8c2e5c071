"""``manage.py simulate_esp32``: virtual ESP32 machines for trying the server without hardware.

``--wifi`` runs N WiFi devices (firmware v2.1, or the documented variant) in threads;
``--serial`` opens a pseudo-terminal answering like the USB firmware, for
``run_serial_bridge --port``. Both print one line per vend and stop on SIGINT/SIGTERM or
after ``--duration``.
"""

import os
import signal
import termios
import threading
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from devices.simulators.serial_firmware import DEFAULT_ID, SerialFirmware
from devices.simulators.wifi_firmware import (
    DEFAULT_SERVER_URL,
    FIRMWARE_HTTP_PORT,
    ServerNotAllowed,
    WifiFirmware,
)
from vending_site.processes.shutdown import stop_on_signals

# Opening the port resets a real ESP32 (DTR/RTS); its banner follows about this much later.
AUTO_RESET_BOOT_SECONDS = 0.5
POWER_ON_SECONDS = 0.2
JOIN_MARGIN = 10.0  # for every thread to finish a vend under way and its confirmation
SERIAL_OUTCOMES = {"success": "dispensed"}  # else the simulator's own word: failed, slot empty


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"--discovery wants HOST:PORT, not {text!r}")
    return host, int(port)


class Command(BaseCommand):
    help = (
        "Simulate ESP32 vending machines: --wifi runs --count WiFi devices polling the server "
        "(at --server, or found by UDP --discovery HOST:PORT); --serial opens a pseudo-terminal "
        "that answers like the USB firmware (reboots with a banner when a client opens it). "
        "Stops cleanly on SIGINT/SIGTERM or after --duration seconds. Loopback only."
    )
    requires_system_checks = []  # it never touches the database

    def add_arguments(self, parser):
        mode = parser.add_argument_group("mode (exactly one)")
        mode.add_argument("--wifi", action="store_true", help="WiFi devices (HTTP polling).")
        mode.add_argument("--serial", action="store_true", help="A USB-serial device on a pty.")
        parser.add_argument("--duration", type=float, default=None, help="Stop after S seconds.")
        wifi = parser.add_argument_group("--wifi")
        wifi.add_argument("--count", type=int, default=1)
        wifi.add_argument("--seed", type=int, default=0, help="Varies the devices' MACs (0-65535).")
        wifi.add_argument("--server", default=None, help=f"Default {DEFAULT_SERVER_URL}.")
        wifi.add_argument(
            "--discovery",
            default=None,
            metavar="HOST:PORT",
            help="Find the server by UDP discovery at this address instead of --server.",
        )
        wifi.add_argument(
            "--http-port",
            type=int,
            default=FIRMWARE_HTTP_PORT,
            help="The HTTP port of a server found by discovery (the firmware's is 5000).",
        )
        wifi.add_argument(
            "--failover",
            action="append",
            default=[],
            metavar="URL",
            help="Another server to use when the current one refuses connections (repeatable);"
            " stands in for a load balancer in front of several workers.",
        )
        wifi.add_argument("--poll-interval", type=float, default=2.0)
        wifi.add_argument("--vend-seconds", type=float, default=1.3)
        wifi.add_argument("--after-confirm", type=float, default=2.0)
        wifi.add_argument(
            "--documented", action="store_true", help="Speak the documented variant (§2)."
        )
        serial = parser.add_argument_group("--serial")
        serial.add_argument("--device-id", default=DEFAULT_ID)
        serial.add_argument("--plain", action="store_true", help="Undecorated answers.")
        serial.add_argument("--stock", type=int, default=None, help="Units per slot.")
        serial.add_argument("--latency", type=float, default=0.0, help="Seconds per vend.")
        serial.add_argument(
            "--link",
            metavar="PATH",
            help="Also make PATH a symlink to the pty (a stable name for the bridge's --port).",
        )
        both = parser.add_argument_group("--serial, and --wifi with --documented")
        both.add_argument("--failure-rate", type=float, default=0.0)

    def handle(self, *args, wifi: bool, serial: bool, duration: float | None, **options):
        if wifi == serial:
            raise CommandError("Give exactly one of --wifi or --serial.")
        if duration is not None and duration <= 0:
            raise CommandError("--duration must be positive.")
        if not 0.0 <= options["failure_rate"] <= 1.0:
            raise CommandError("--failure-rate must be between 0 and 1.")
        if options["poll_interval"] <= 0:
            raise CommandError("--poll-interval must be positive.")
        for name in ("vend_seconds", "after_confirm", "latency"):
            if options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must not be negative.")
        if options["stock"] is not None and options["stock"] < 0:
            raise CommandError("--stock must not be negative.")
        self._output = threading.Lock()
        if wifi:
            devices = self._wifi_devices(**options)
            self._run(duration, lambda stop: self._start_wifi(devices, stop))
            confirmed = sum(len(device.confirmations()) for device in devices)
            self.say(f"simulator stopped: {len(devices)} device(s), {confirmed} vend(s) confirmed")
        else:
            firmware = SerialFirmware(
                device_id=options["device_id"],
                plain=options["plain"],
                stock={n: options["stock"] for n in range(1, 6)}
                if options["stock"] is not None
                else None,
                failure_rate=options["failure_rate"],
                latency=options["latency"],
                on_vend=lambda slot, outcome: self.say(
                    f"{firmware.device_id} slot {slot}: {SERIAL_OUTCOMES.get(outcome, outcome)}"
                ),
            )
            link = Path(options["link"]) if options["link"] else None
            try:
                if link is not None:
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.unlink(missing_ok=True)
                    link.symlink_to(firmware.path)
                self._run(duration, lambda stop: self._start_serial(firmware, stop))
            finally:
                firmware.close()
                if link is not None and link.is_symlink():
                    link.unlink()
            self.say("simulator stopped")

    # --- running until told to stop ------------------------------------------------------------

    def _run(self, duration: float | None, start) -> None:
        """Install the signal handlers, start, and wait for a signal or the duration."""
        stop = threading.Event()
        previous = stop_on_signals(stop)
        try:
            threads = start(stop)
            deadline = time.monotonic() + duration if duration is not None else None
            while not stop.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                stop.wait(0.5 if remaining is None else min(0.5, remaining))
            stop.set()
            join_by = time.monotonic() + JOIN_MARGIN
            for thread in threads:
                thread.join(timeout=max(0.0, join_by - time.monotonic()))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # --- WiFi -----------------------------------------------------------------------------------

    def _wifi_devices(
        self, *, count: int, seed: int, server: str | None, discovery: str | None, **options
    ) -> list[WifiFirmware]:
        if not 1 <= count <= 10_000:
            raise CommandError("--count must be between 1 and 10000.")
        if server and discovery:
            raise CommandError("Give --server or --discovery, not both.")
        if options["failure_rate"] and not options["documented"]:
            raise CommandError(
                "--failure-rate needs --documented: firmware v2.1 always reports success."
            )
        where = {"server_url": server or DEFAULT_SERVER_URL}
        if discovery:
            where = {"server_url": None, "discovery": host_port(discovery)}
        try:
            return [
                WifiFirmware(
                    index=index,
                    seed=seed,
                    http_port=options["http_port"],
                    poll_interval=options["poll_interval"],
                    vend_seconds=options["vend_seconds"],
                    after_confirm=options["after_confirm"],
                    failover_urls=tuple(options["failover"]),
                    documented=options["documented"],
                    failure_rate=options["failure_rate"],
                    on_record=self._report,
                    say=self.say,
                    **where,
                )
                for index in range(1, count + 1)
            ]
        except (ValueError, ServerNotAllowed) as exc:
            raise CommandError(str(exc)) from exc

    def _start_wifi(self, devices: list[WifiFirmware], stop: threading.Event):
        first = devices[0]
        target = first.server_url or f"discovery at {first.discovery[0]}:{first.discovery[1]}"
        dialect = "documented variant" if first.documented else "firmware v2.1"
        self.say(f"simulating {len(devices)} WiFi device(s) ({dialect}) against {target}")
        for device in devices:
            device.start(stop)
        return [device.thread for device in devices]

    def _report(self, entry: dict) -> None:
        if entry["event"] == "confirm":
            outcome = "dispensed" if entry["success"] else "failed"
            lost = "" if entry["status"] == 200 else " (confirmation not answered)"
            self.say(f"{entry['device_id']} slot {entry['slot']}: {outcome}{lost}")
        elif not entry.get("acted", True):
            self.say(f"{entry['device_id']} ignored {entry.get('command') or entry.get('raw')!r}")

    # --- serial ---------------------------------------------------------------------------------

    def _start_serial(self, firmware: SerialFirmware, stop: threading.Event):
        runner = threading.Thread(target=firmware.run, args=(stop,), daemon=True, name="serial")
        runner.start()
        # Let the power-on banner (heard by nobody) go out before a client may open the port;
        # the client then hears one banner, from the reset its opening causes.
        stop.wait(POWER_ON_SECONDS)
        threads = [runner]
        try:
            reset = AutoReset(firmware, stop)  # notes the line settings before anyone opens it
        except (OSError, termios.error) as exc:
            self.say(f"no auto-reset on open ({exc})")
        else:
            threads.append(reset.start())
        self.say(f"serial device ready at {firmware.path}")
        return threads

    def say(self, text: str) -> None:
        with self._output:
            self.stdout.write(text)
            self.stdout.flush()


class AutoReset:
    """Emulate the DTR/RTS auto-reset: when a client opens the port, boot again.

    A pseudo-terminal does not tell its master that the slave was opened, but a serial
    client configures the line when it opens it (pyserial sets raw mode and the baud rate,
    then flushes its input, losing anything sent before), so a change of the line settings
    is taken as an open and answered with a fresh boot banner a moment later.
    """

    def __init__(self, firmware: SerialFirmware, stop: threading.Event) -> None:
        self.firmware = firmware
        self.stop = stop
        self.fd = os.open(firmware.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            self.settings = termios.tcgetattr(self.fd)
        except termios.error:
            os.close(self.fd)
            raise

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True, name="auto-reset")
        thread.start()
        return thread

    def run(self) -> None:
        try:
            while not self.stop.wait(0.05):
                current = termios.tcgetattr(self.fd)
                if current != self.settings:
                    self.settings = current
                    if not self.stop.wait(AUTO_RESET_BOOT_SECONDS):
                        self.firmware.banner()
        except (OSError, termios.error):
            return  # the port is gone
        finally:
            os.close(self.fd)
