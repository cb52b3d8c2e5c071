"""``manage.py run_serial_bridge``: link USB-serial ESP32s to the server."""

import signal
import threading

import serial.tools.list_ports
from django.conf import settings
from django.core.management.base import BaseCommand

from devices.protocol import likely_esp32
from devices.serial_bridge import LinkConfig, SerialLink

RESCAN_SECONDS = 5.0


class Command(BaseCommand):
    help = (
        "Open the given serial ports (or, with none given, every port whose USB VID:PID is an "
        "ESP32 board's), register each device, deliver its queued commands and record the "
        "results. Waits quietly while no port is present; stops cleanly on SIGINT/SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--port",
            action="append",
            default=[],
            help="A serial port path (repeatable); any path works, a pseudo-terminal too.",
        )
        parser.add_argument("--list", action="store_true", help="List serial ports and exit.")
        parser.add_argument("--baud", type=int, default=settings.SERIAL_BAUD)
        parser.add_argument("--reply-timeout", type=float, default=settings.SERIAL_REPLY_TIMEOUT)

    def handle(
        self, *args, port: list[str], list: bool, baud: int, reply_timeout: float, **options
    ):
        if list:
            self.list_ports()
            return
        config = LinkConfig(baud=baud, reply_timeout=reply_timeout)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        links: dict[str, threading.Thread] = {}

        def start(path: str) -> None:
            link = SerialLink(path, config, stop, say=self.say)
            thread = threading.Thread(target=link.run, name=f"serial {path}", daemon=True)
            links[path] = thread
            thread.start()

        for path in port:
            start(path)
        if port:
            self.say(f"serial bridge: linking {', '.join(port)}")
        else:
            self.say("serial bridge: waiting for ESP32 serial ports (none given, auto-detect)")
        while not stop.is_set():
            if not port:
                for info in serial.tools.list_ports.comports():
                    if likely_esp32(info.vid, info.pid) and info.device not in links:
                        self.say(f"serial bridge: found {info.device} ({info.description})")
                        start(info.device)
            stop.wait(RESCAN_SECONDS)
        for thread in links.values():
            thread.join(timeout=reply_timeout + 5)
        self.say("serial bridge stopped")

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def list_ports(self) -> None:
        ports = sorted(serial.tools.list_ports.comports(), key=lambda info: info.device)
        if not ports:
            self.stdout.write("No serial ports found.")
            return
        self.stdout.write(f"{'PORT':<24} {'VID:PID':<10} {'ESP32?':<7} DESCRIPTION")
        for info in ports:
            ids = f"{info.vid:04X}:{info.pid:04X}" if info.vid is not None else "-"
            esp = "yes" if likely_esp32(info.vid, info.pid) else "no"
            self.stdout.write(f"{info.device:<24} {ids:<10} {esp:<7} {info.description}")
