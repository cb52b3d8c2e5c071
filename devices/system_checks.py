"""The checks behind ``manage.py check_system``: is every part of an install working?

Each check is a function returning a :class:`CheckResult`; none raises (an unexpected error
is a ``fail`` naming it). The network checks talk only to the address they are given (by
default this host's loopback), never broadcast, and each waits a bounded time.
"""

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum

import serial.tools.list_ports
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from vending_site.http import health
from vending_site.notify.outbox import queue_health
from vending_site.processes.heartbeat import NOTIFIER, ServiceState, services_state

from .models import Device, SerialPort
from .protocol import ESP32_USB_IDS, likely_esp32
from .selectors import online_devices

DISCOVERY_TIMEOUT = 1.0
WEB_TIMEOUT = 5.0  # /health itself waits up to 2 s for the channel layer
DISCOVERY_REQUEST = b"ESP32_DISCOVERY_REQUEST"
DISCOVERY_ANSWER = b"FLASK_SERVER:"


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": str(self.status)}


def _guarded(name: str, hint: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a check reports a failure, it does not crash
        return CheckResult(name, Status.FAIL, f"{type(exc).__name__}: {exc}", hint)


# --- the server's own state -------------------------------------------------------------


def check_database() -> CheckResult:
    def run() -> CheckResult:
        health.check_database()
        vendor = connections[DEFAULT_DB_ALIAS].vendor
        return CheckResult("database", Status.PASS, f"{vendor} answers")

    return _guarded("database", "check DATABASE_URL and that the database server is running", run)


def check_migrations() -> CheckResult:
    def run() -> CheckResult:
        health.check_migrations()
        return CheckResult("migrations", Status.PASS, "all applied")

    return _guarded("migrations", "run: manage.py migrate", run)


def check_channel_layer() -> CheckResult:
    def run() -> CheckResult:
        health.check_channel_layer()
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
        detail = f"{backend} round trip ok"
        if backend == "InMemoryChannelLayer":
            detail += " (in-memory: events do not cross processes)"
        return CheckResult("channel_layer", Status.PASS, detail)

    return _guarded("channel_layer", "check REDIS_URL and that Redis is running", run)


def check_devices_online() -> CheckResult:
    def run() -> CheckResult:
        total = Device.objects.count()
        online = online_devices().count()
        detail = f"{online} of {total} online"
        if total == 0:
            return CheckResult(
                "devices",
                Status.WARN,
                "no device has registered yet",
                "power a machine on: it registers on its first request to this server",
            )
        if online == 0:
            return CheckResult(
                "devices",
                Status.WARN,
                detail,
                f"none was heard in the last {settings.DEVICE_OFFLINE_AFTER} s: check the "
                "machines' power and WiFi, or that run_serial_bridge is running",
            )
        return CheckResult("devices", Status.PASS, detail)

    return _guarded("devices", "check the database and migrations checks above", run)


def check_notifier() -> CheckResult:
    """The notification outbox: sent on time by a running ``run_notifier``?"""

    def run() -> CheckResult:
        queue = queue_health()
        state = next(s["state"] for s in services_state() if s["name"] == NOTIFIER)
        detail = (
            f"{queue.pending} pending to {queue.endpoints} endpoint(s); "
            f"notifier {state.replace('_', ' ')}"
        )
        if queue.overdue:
            return CheckResult(
                "notifier",
                Status.WARN,
                f"{queue.overdue} deliveries overdue by over a minute; {detail}",
                "is manage.py run_notifier running? (make run, compose and systemd start one)",
            )
        if queue.endpoints and state != ServiceState.RUNNING:
            return CheckResult("notifier", Status.WARN, detail, "start manage.py run_notifier")
        if queue.failed_last_day:
            return CheckResult(
                "notifier",
                Status.WARN,
                f"{queue.failed_last_day} deliveries failed in the last day; {detail}",
                "the admin's Deliveries list says why; replay them once the receiver is back",
            )
        return CheckResult("notifier", Status.PASS, detail)

    return _guarded("notifier", "check the database and migrations checks above", run)


# --- USB serial -------------------------------------------------------------------------

DIALOUT_HINT = (
    "opening a serial port needs membership of the dialout group "
    "(sudo usermod -aG dialout $USER, then log in again); check too that the cable is "
    "still plugged in"
)


def open_port(path: str) -> None:
    """Open and close ``path`` as the bridge would need to; raises the ``OSError``.

    A plain ``open`` (no ``termios`` settings, no DTR/RTS toggling by us) so a bridge
    already using the port keeps its line settings.
    """
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    os.close(fd)


def bridge_linked_ports() -> list[SerialPort]:
    """The ports the serial bridge reports open with a machine linked; none when the
    database cannot say (the database check reports that)."""
    try:
        return list(
            SerialPort.objects.filter(is_open=True, device__isnull=False)
            .select_related("device")
            .order_by("path")
        )
    except DatabaseError:
        return []


def check_serial_ports(
    *,
    comports: Callable[[], Iterable] | None = None,
    opener: Callable[[str], None] = open_port,
) -> CheckResult:
    """Warn when no port has an ESP32 board's USB VID:PID and the bridge has no machine
    linked on any port; fail when an ESP32 port cannot be opened."""

    def run() -> CheckResult:
        ports = list((comports or serial.tools.list_ports.comports)())
        candidates = sorted(
            (info for info in ports if likely_esp32(info.vid, info.pid)),
            key=lambda info: info.device,
        )
        if not candidates:
            # A board on a port without a known USB id (an adapter, a pseudo-terminal), or a
            # bridge on another host: the bridge's own report says a machine is connected.
            linked = bridge_linked_ports()
            if linked:
                names = ", ".join(f"{port.path} ({port.device.device_id})" for port in linked)
                return CheckResult(
                    "serial",
                    Status.PASS,
                    f"the serial bridge has {len(linked)} port(s) open with a machine: {names}",
                )
            chips = ", ".join(sorted(set(ESP32_USB_IDS.values())))
            return CheckResult(
                "serial",
                Status.WARN,
                f"no ESP32 USB serial port among {len(ports)} serial port(s)",
                f"plug a board in over USB (known chips: {chips}); see every port with "
                "manage.py run_serial_bridge --list, and name another with --port",
            )
        problems = []
        for info in candidates:
            try:
                opener(info.device)
            except OSError as exc:
                problems.append(f"{info.device}: {exc}")
        if problems:
            return CheckResult("serial", Status.FAIL, "; ".join(problems), DIALOUT_HINT)
        names = ", ".join(info.device for info in candidates)
        return CheckResult("serial", Status.PASS, f"{len(candidates)} openable: {names}")

    return _guarded("serial", DIALOUT_HINT, run)


# --- what the machines reach over the network -------------------------------------------


def check_discovery(
    *, port: int, host: str = "127.0.0.1", timeout: float = DISCOVERY_TIMEOUT
) -> CheckResult:
    """Send one real discovery request to ``host:port`` and wait ``timeout`` for the answer."""
    hint = (
        f"is manage.py run_discovery running? This check asks {host}, so it must listen on "
        "0.0.0.0 or 127.0.0.1; give another port with --discovery-port"
    )

    def run() -> CheckResult:
        where = f"udp {host}:{port}"
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            # connect: only that peer's datagrams are read, and a closed port is reported
            # at once (ICMP port unreachable) instead of after the timeout.
            sock.connect((host, port))
            sock.send(DISCOVERY_REQUEST)
            for _attempt in range(8):  # stray datagrams from the peer are skipped
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                try:
                    reply = sock.recv(128)
                except TimeoutError:
                    break
                except ConnectionRefusedError:
                    return CheckResult("discovery", Status.FAIL, f"{where}: refused", hint)
                if reply.startswith(DISCOVERY_ANSWER):
                    text = reply.decode("ascii", "replace")
                    return CheckResult("discovery", Status.PASS, f"{where} answered {text}")
        return CheckResult("discovery", Status.FAIL, f"{where}: no answer in {timeout:g} s", hint)

    return _guarded("discovery", hint, run)


def default_web_url() -> str:
    return f"http://127.0.0.1:{settings.PORT}/health"


def check_web(*, url: str, timeout: float = WEB_TIMEOUT) -> CheckResult:
    """``GET url`` (the server's ``/health``); pass on 200 with ``"status": "healthy"``."""
    hint = (
        "is manage.py serve (make run) running? If it listens on another address or port, "
        "give its health URL with --web-url"
    )
    # No proxy, whatever the environment says: this asks the server itself.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def run() -> CheckResult:
        if not url.startswith(("http://", "https://")):
            return CheckResult("web", Status.FAIL, f"{url}: not an http(s) URL", hint)
        try:
            with opener.open(url, timeout=timeout) as response:
                status, raw = response.status, response.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read(64 * 1024)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return CheckResult("web", Status.FAIL, f"{url}: {reason}", hint)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return CheckResult(
                "web", Status.FAIL, f"{url}: HTTP {status}, not a health report", hint
            )
        if status == 200 and body.get("status") == "healthy":
            return CheckResult("web", Status.PASS, f"{url}: HTTP 200 healthy")
        failing = {
            name: value for name, value in (body.get("checks") or {}).items() if value != "ok"
        }
        detail = f"{url}: HTTP {status} {body.get('status', '')}".rstrip()
        if failing:
            detail += " (" + "; ".join(f"{k}: {v}" for k, v in failing.items()) + ")"
        if status == 200 and body.get("status") == "degraded":
            return CheckResult(
                "web", Status.WARN, detail, "the server vends, but without what is failing"
            )
        return CheckResult(
            "web", Status.FAIL, detail, "the server answers but is unhealthy; see the detail"
        )

    return _guarded("web", hint, run)


# --- all of them ------------------------------------------------------------------------

CHECK_NAMES = (
    "database",
    "migrations",
    "channel_layer",
    "serial",
    "discovery",
    "web",
    "devices",
    "notifier",
)


def run_checks(*, discovery_port: int, web_url: str, skip: Iterable[str] = ()) -> list[CheckResult]:
    """Every check not in ``skip``, in :data:`CHECK_NAMES` order."""
    checks: dict[str, Callable[[], CheckResult]] = {
        "database": check_database,
        "migrations": check_migrations,
        "channel_layer": check_channel_layer,
        "serial": check_serial_ports,
        "discovery": lambda: check_discovery(port=discovery_port),
        "web": lambda: check_web(url=web_url),
        "devices": check_devices_online,
        "notifier": check_notifier,
    }
    skipped = set(skip)
    return [checks[name]() for name in CHECK_NAMES if name not in skipped]
