"""``manage.py run_serial_bridge``: link USB-serial ESP32s to the server."""

import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from devices.protocol import likely_esp32
from devices.serial_bridge import Bridge, LinkConfig, scan_ports
from vending_site.processes.heartbeat import SERIAL_BRIDGE, Heartbeat
from vending_site.processes.shutdown import stop_on_signals


class Command(BaseCommand):
    help = (
        "Open the given serial ports (or, with none given, every port whose USB VID:PID is an "
        "ESP32 board's), register each device, deliver its queued commands and record the "
        "results. Reports the ports it sees and obeys connect/disconnect requests made in the "
        "admin or the dashboard. Waits quietly while no port is present; stops cleanly on "
        "SIGINT/SIGTERM."
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

    def handle(self, *args, port, list, baud, reply_timeout, **options):
        if list:
            self.list_ports()
            return
        stop = threading.Event()
        stop_on_signals(stop)
        if port:
            self.say(f"serial bridge: ports {', '.join(port)}")
        else:
            self.say("serial bridge: waiting for ESP32 serial ports (auto-detect by USB id)")
        heartbeat = Heartbeat(SERIAL_BRIDGE, detail={"ports": port or "auto"}).start()
        try:
            Bridge(
                explicit=port,
                config=LinkConfig(baud=baud, reply_timeout=reply_timeout),
                stop=stop,
                say=self.say,
            ).run()
        finally:
            heartbeat.stop()
        self.say("serial bridge stopped")

    def say(self, text: str) -> None:
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (OSError, ValueError):
            pass  # nobody reads our output any more; the work goes on

    def list_ports(self) -> None:
        ports = sorted(scan_ports(), key=lambda report: report.path)
        if not ports:
            self.stdout.write("No serial ports found.")
            return
        self.stdout.write(f"{'PORT':<24} {'VID:PID':<10} {'ESP32?':<7} DESCRIPTION")
        for report in ports:
            ids = f"{report.vid:04X}:{report.pid:04X}" if report.vid is not None else "-"
            esp = "yes" if likely_esp32(report.vid, report.pid) else "no"
            self.stdout.write(f"{report.path:<24} {ids:<10} {esp:<7} {report.description}")
