"""The USB-serial bridge behind ``manage.py run_serial_bridge``: it runs one
:class:`~devices.serial_link.SerialLink` per port that should be open (what each link
guarantees is said there), keeps the database's picture of the ports (``SerialPort``) true,
and wakes a link when a command is queued for its device (PostgreSQL ``LISTEN``).
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial.tools.list_ports
from django.db import DatabaseError, connection

from . import services
from .models import SerialPort
from .serial_link import CommandWaker, LinkConfig, SerialLink

logger = logging.getLogger(__name__)


def scan_ports() -> list[services.PortReport]:
    return [
        services.PortReport(
            path=info.device, vid=info.vid, pid=info.pid, description=info.description or ""
        )
        for info in serial.tools.list_ports.comports()
    ]


@dataclass
class _Running:
    link: SerialLink
    thread: threading.Thread
    stop: threading.Event
    reported: tuple | None = None  # (open, device pk) as last written


class Bridge:
    """Runs one :class:`SerialLink` per port that should be open, and keeps the database's
    picture of the ports (``SerialPort``) true.

    Explicit ports are linked unless staff asked to disconnect them; scanned ports are linked
    when they look like an ESP32 board (USB VID:PID) or staff asked to connect them. Staff
    requests are read every ``control_interval`` seconds.
    """

    def __init__(
        self,
        *,
        explicit: list[str],
        config: LinkConfig,
        stop: threading.Event,
        say: Callable[[str], None] = print,
        scan: Callable[[], list[services.PortReport]] = scan_ports,
        rescan_seconds: float = 5.0,
        control_interval: float = 0.5,
    ) -> None:
        self.explicit = list(explicit)
        self.config = config
        self.stop = stop
        self.say = say
        self.scan = scan
        self.rescan_seconds = rescan_seconds
        self.control_interval = control_interval
        self.running: dict[str, _Running] = {}
        self.present: set[str] = set()
        self.waker = CommandWaker(stop)

    def run(self) -> None:
        self.waker.start()
        next_scan = 0.0
        while not self.stop.is_set():
            try:
                if time.monotonic() >= next_scan:
                    self._rescan()
                    next_scan = time.monotonic() + self.rescan_seconds
                self._steer()
                self._report()
            except DatabaseError as exc:
                logger.warning("serial bridge: database unavailable (%s); will retry", exc)
                connection.close()
            self.stop.wait(self.control_interval)
        for running in self.running.values():
            running.stop.set()
        for running in self.running.values():
            running.thread.join(timeout=self.config.reply_timeout + 5)
        try:
            self._report(final=True)
        except DatabaseError:
            pass
        connection.close()

    def _rescan(self) -> None:
        reports = self.scan()
        listed = {report.path for report in reports}
        reports += [services.PortReport(path=path) for path in self.explicit if path not in listed]
        self.present = {report.path for report in reports}
        services.report_serial_ports(reports)

    def _steer(self) -> None:
        ports = {port.path: port for port in SerialPort.objects.filter(path__in=self.present)}
        for path in sorted(self.present):
            port = ports.get(path)
            want = port is not None and port.wanted_open(explicit=path in self.explicit)
            running = self.running.get(path)
            if want and running is None:
                self._start(path)
            elif not want and running is not None:
                self.say(f"serial bridge: disconnecting {path}")
                running.stop.set()
        for path, running in list(self.running.items()):
            if running.stop.is_set() and not running.thread.is_alive():
                services.set_port_state(path=path, is_open=False)
                del self.running[path]

    def _start(self, path: str) -> None:
        stop = threading.Event()
        link = SerialLink(
            path,
            self.config,
            stop,
            say=self.say,
            waker=self.waker,
            explicit=path in self.explicit,
        )
        thread = threading.Thread(target=link.run, name=f"serial {path}", daemon=True)
        self.running[path] = _Running(link=link, thread=thread, stop=stop)
        self.say(f"serial bridge: linking {path}")
        thread.start()

    def _report(self, final: bool = False) -> None:
        for path, running in self.running.items():
            device = running.link.device
            # Open, for staff, means linked: the port is open and the device identified.
            is_open = running.link.connected.is_set() and device is not None and not final
            state = (is_open, device.pk if device else None)
            if state != running.reported:
                services.set_port_state(path=path, is_open=is_open, device=device)
                running.reported = state
