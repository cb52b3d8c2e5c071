"""Writes about machines: the communication log, registration and check-in, presence, the
active machine, slots reported empty, and the serial ports the bridge sees.

Transports (the HTTP device views, the serial bridge, discovery) call these and translate
the result back to bytes. What happens to a vend (queueing, delivery, confirmation, expiry)
is the ``transactions`` app's: see ``transactions.delivery`` and ``transactions.confirmation``.
"""

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from inventory.choices import MovementReason
from inventory.models import Slot
from inventory.services import ensure_slots, set_stock
from vending_site.backends.statements import Insert
from vending_site.http.throttling import count_hits
from vending_site.live.events import publish, publish_many

from . import poll_cache, presence
from .access import admit_wifi_request, canonical_ip
from .choices import (
    Direction,
    LogLevel,
    PortRequest,
    Protocol,
    Transport,
)
from .exceptions import UnknownDevice
from .models import MAX_SLOTS, CommunicationLog, Device, SerialPort
from .protocol import DEVICE_ID_PREFIX, likely_esp32, mac_from_device_id
from .selectors import DEVICE_BY_ID, canonical_id, device_for_poll, online_devices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exchange:
    """One message that crossed the wire, as the communication log records it (``at``: when
    it crossed; now if not given)."""

    direction: Direction
    transport: Transport
    message: str
    device: Device | None = None
    device_key: str = ""
    endpoint: str = ""
    level: LogLevel = LogLevel.INFO
    remote_addr: str = ""
    at: datetime | None = None

    def entry(self) -> CommunicationLog:
        # PostgreSQL refuses NUL in text, and a rejected id or path is logged as it was sent.
        key = self.device_key or (self.device.device_id if self.device else "")
        return CommunicationLog(
            device=self.device,
            device_key=key.replace("\x00", "\\x00")[:64],
            direction=self.direction,
            transport=self.transport,
            endpoint=self.endpoint.replace("\x00", "\\x00")[:100],
            message=self.message.replace("\x00", "\\x00"),
            level=self.level,
            remote_addr=self.remote_addr[:255],
            created_at=self.at or timezone.now(),
        )


_NEW_LOG_ENTRY = Insert(CommunicationLog)  # every exchange: its INSERT compiled once


def log_exchange(
    *,
    direction: Direction,
    transport: Transport,
    message: str,
    device: Device | None = None,
    device_key: str = "",
    endpoint: str = "",
    level: LogLevel = LogLevel.INFO,
    remote_addr: str = "",
    limited: bool = False,
) -> CommunicationLog | None:
    """Record one message that crossed the wire, and show it on live pages.

    ``limited``: the message is what an unauthenticated sender made us say (a request over
    HTTP, a refusal of one), so it is written only within ``DEVICE_LOG_RATE`` rows a minute
    per sending address and per machine; past that it is counted, not written, and the
    first row of the next minute says how many were left out. Returns None then."""
    key = device_key or (device.device_id if device else "")
    if limited:
        admitted = _log_budget(remote_addr, key)
        if admitted is None:
            return None
        for note in admitted:
            _write_log_entry(
                Exchange(
                    direction, transport, note, device, key, endpoint, LogLevel.WARNING, remote_addr
                )
            )
    fields = (direction, transport, message, device, device_key, endpoint, level, remote_addr)
    return _write_log_entry(Exchange(*fields))


def _write_log_entry(exchange: Exchange) -> CommunicationLog:
    entry = _NEW_LOG_ENTRY.insert(exchange.entry())
    publish("log", log_entry_payload(entry))
    return entry


_LOG_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_.]")


def _log_budget(remote_addr: str, device_key: str) -> list[str] | None:
    """None when this minute's rows for the address or the machine are spent; else the
    notes to write first about the rows the previous minute left out (usually none)."""
    rate = settings.DEVICE_LOG_RATE
    if rate <= 0:
        return []
    window = int(time.time() // 60)
    # The machine's budget is per sending address too: a stranger's refused requests must
    # not use up the rows of the machine's own reports.
    address = remote_addr or "unknown"
    scopes = [("address", address), ("machine", f"{device_key or 'none'} from {address}")]
    counters = [
        (f"devlog.{scope}.{_LOG_KEY_CHARACTERS.sub('_', who)[:80]}", window, 60)
        for scope, who in scopes
    ]
    counts = count_hits(cache, counters)
    if counts is None:  # the cache is unreachable: write, as the throttles let requests by
        return []
    if any(hits > rate for hits, _before in counts):
        return None
    notes = []
    for (scope, who), (hits, before) in zip(scopes, counts, strict=True):
        if hits == 1 and before > rate:
            notes.append(
                f"{before - rate} more entries for this {scope} ({who}) in the previous minute "
                f"were not written (DEVICE_LOG_RATE={rate}/min)"
            )
    return notes


@transaction.atomic
def log_exchanges(exchanges: list[Exchange]) -> list[CommunicationLog]:
    """Record a batch of exchanges in one transaction (one INSERT for the log, one for the
    live events); the same rows and events :func:`log_exchange` writes, one by one."""
    entries = CommunicationLog.objects.bulk_create([exchange.entry() for exchange in exchanges])
    publish_many("log", [log_entry_payload(entry) for entry in entries])
    return entries


LOG_EVENT_MESSAGE_LIMIT = 500  # characters of a log line a live page is sent


def log_entry_payload(entry: CommunicationLog) -> dict:
    """The shape of a ``log`` live event (also what the dashboard's feed starts from)."""
    return {
        "id": entry.pk,
        "device_id": entry.device_key,
        "direction": entry.direction,
        "transport": entry.transport,
        "endpoint": entry.endpoint,
        "message": entry.message[:LOG_EVENT_MESSAGE_LIMIT],
        "level": entry.level,
        "created_at": entry.created_at.isoformat(),
    }


def device_payload(device: Device) -> dict:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "transport": device.transport,
        "online": device.is_online,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
        "is_active": device.is_active,
        "admission": device.admission,
        "asks_from": device.moved_to,
    }


def publish_device(device: Device) -> None:
    """Show ``device`` as it is now on live pages (after staff changed it)."""
    publish("device", device_payload(device))


def register_over_wifi(
    *,
    raw_id: str,
    protocol: Protocol,
    address: str,
    ip_address: str | None = None,
    slot_count: int | None = None,
    firmware_version: str = "",
    reported_status: str = "",
) -> tuple[Device, bool]:
    """A WiFi machine announces itself over HTTP from ``address``: admitted as
    :func:`devices.access.admit_wifi_request` says (a machine bound elsewhere or linked by
    USB is refused and changes nothing; a new one is pending and counts against
    ``DEVICE_PENDING_LIMIT``), then registered as :func:`register_device` does."""
    device_id = canonical_id(raw_id)
    known = DEVICE_BY_ID.first(device_id=device_id)
    admit_wifi_request(known, device_id=device_id, address=address)
    return register_device(
        raw_id=device_id,
        transport=Transport.WIFI,
        protocol=protocol,
        ip_address=ip_address,
        address=address,
        slot_count=slot_count,
        firmware_version=firmware_version,
        reported_status=reported_status,
    )


@transaction.atomic
def register_device(
    *,
    raw_id: str,
    transport: Transport = Transport.WIFI,
    protocol: Protocol = Protocol.WIFI_V2,
    ip_address: str | None = None,
    address: str = "",
    serial_port: str = "",
    slot_count: int | None = None,
    firmware_version: str = "",
    reported_status: str = "",
    admitted: bool = False,
) -> tuple[Device, bool]:
    """Create or refresh a device from what it said about itself; mark it seen now.

    A new WiFi machine is pending when ``DEVICE_APPROVAL_REQUIRED``: it gets no slots and
    is not made active until staff approve it (``devices.approval.set_approved``). Otherwise
    its missing slot rows are created, and it becomes the active device when none is, so a
    single-machine install works without any selection. ``address`` is where the request
    came from (the address approval binds to). ``admitted``: the caller is the operator's
    own setup (a benchmark's or a test stack's machines), so a new machine starts approved.
    Returns ``(device, created)``. Admission is the caller's (:func:`register_over_wifi`;
    a serial cable is its own admission).
    """
    device_id = canonical_id(raw_id)
    now = timezone.now()
    count = min(max(slot_count or 0, 0), MAX_SLOTS) or None
    device, created = Device.objects.select_for_update().get_or_create(
        device_id=device_id,
        defaults={
            "transport": transport,
            "protocol": protocol,
            "slot_count": count or settings.DEVICE_DEFAULT_SLOTS,
            "mac_address": mac_from_device_id(device_id),
            "registered_at": now,
            **_admission_at_creation(transport, address, admitted=admitted, now=now),
        },
    )
    # Live pages hear of a registration that shows them something new (a machine, one back
    # online, a changed link), not of every repeat: re-registering is no way to flood them.
    news = created or not device.is_online or device.transport != transport
    device.transport = transport
    device.protocol = protocol
    device.last_seen = now
    if count:
        device.slot_count = count
    if ip_address:
        device.ip_address = ip_address
    if serial_port:
        device.serial_port = serial_port
    if firmware_version:
        device.firmware_version = firmware_version[:50]
    if reported_status:
        device.reported_status = reported_status[:50]
    # Only what the machine said: a whole-row save could undo an approval or a move that
    # staff committed meanwhile (SQLite has no row lock to keep them out).
    device.save(update_fields=_REGISTERED_FIELDS)
    if not device.awaiting_approval:
        ensure_slots(device=device, count=device.slot_count)
        activate_if_none_active(device)
    if news:
        publish("device", device_payload(device))
    return device, created


_REGISTERED_FIELDS = [
    "transport",
    "protocol",
    "last_seen",
    "slot_count",
    "ip_address",
    "serial_port",
    "firmware_version",
    "reported_status",
]


def _admission_at_creation(
    transport: Transport, address: str, *, admitted: bool, now: datetime
) -> dict:
    """A new machine's admission fields: approved and bound to the address it spoke from
    when it needs no approval (serial, ``DEVICE_APPROVAL_REQUIRED`` off, or the operator's
    own setup); else pending, with that address noted for staff."""
    here = canonical_ip(address)
    if transport == Transport.SERIAL:
        return {"approved": True}
    if admitted or not settings.DEVICE_APPROVAL_REQUIRED:
        return {"approved": True, "bound_address": here, "last_address": here}
    return {
        "approved": False,
        "last_address": here,
        "moved_to": here,
        "moved_at": now if here else None,
    }


def activate_if_none_active(device: Device) -> None:
    """Make ``device`` the active one when no device is; a device another process activated
    meanwhile stays active (the database allows one, so the loser's update is refused)."""
    if Device.objects.filter(is_active=True).exists():
        return
    try:
        with transaction.atomic():
            Device.objects.filter(pk=device.pk).update(is_active=True)
            device.is_active = True
    except IntegrityError:
        pass  # another process activated a device first; that one stays active


def select_active_device(*, device: Device) -> Device:
    """Make ``device`` the only active device (the database allows at most one)."""
    for _attempt in range(3):
        try:
            with transaction.atomic():
                Device.objects.filter(is_active=True).exclude(pk=device.pk).update(is_active=False)
                Device.objects.filter(pk=device.pk).update(is_active=True)
            break
        except IntegrityError:
            continue  # a concurrent selection committed between our two updates; go again
    device.is_active = True
    publish("device", device_payload(device))
    return device


def auto_select_active_device() -> Device | None:
    """Prefer a connected serial device, else the most recently seen WiFi device."""
    online = online_devices()
    device = (
        online.filter(transport=Transport.SERIAL).order_by("-last_seen").first()
        or online.filter(transport=Transport.WIFI).order_by("-last_seen").first()
    )
    if device is not None:
        select_active_device(device=device)
    return device


def mark_seen(device: Device, *, now: datetime | None = None) -> None:
    """Refresh ``last_seen`` when the stored value is older than
    ``DEVICE_SEEN_WRITE_INTERVAL`` (an idle fleet then costs reads, not writes).

    A device that comes online is written at once and published. An online device's
    refresh is left to the process's writer (``devices.presence``), which writes every
    refresh of the last ``DEVICE_SEEN_FLUSH_SECONDS`` in one statement; with that setting at
    0 it is written here."""
    now = now or timezone.now()
    threshold = now - timedelta(seconds=settings.DEVICE_SEEN_WRITE_INTERVAL)
    was_online = device.is_online
    if was_online and device.last_seen > threshold:
        return
    if was_online and settings.DEVICE_SEEN_FLUSH_SECONDS > 0:
        presence.buffer.note(device.pk, now)
        device.last_seen = now
        return
    Device.objects.filter(pk=device.pk).update(last_seen=now)
    device.last_seen = now
    if not was_online:
        publish("device", device_payload(device))


@dataclass(frozen=True)
class CheckIn:
    """A WiFi machine that asked for work, admitted: whether it has queued commands (read
    with it) and whether this request registered it."""

    device: Device
    has_pending: bool
    registered: bool


def check_in(
    *,
    raw_id: str,
    protocol: Protocol,
    remote_addr: str = "",
    endpoint: str = "",
) -> CheckIn:
    """A WiFi machine polls: admit it, register it if unknown, note it was seen.

    Refused before anything is written (:func:`devices.access.admit_wifi_request`): a
    stranger neither takes a command nor keeps an absent machine looking online, and a flood
    of new ids stops at the pending cap. A known machine costs one indexed read (which also
    says whether it has queued commands); its ``last_seen`` refresh is written by the
    process's writer, not by the poll (:func:`mark_seen`).

    A known machine with nothing pending may be answered from what this process kept
    (``devices.poll_cache``), without the read.
    """
    device_id = canonical_id(raw_id)
    device = poll_cache.cached(device_id)
    if device is None:
        token = poll_cache.begin()
        device = device_for_poll(device_id)
        if device is not None:
            poll_cache.remember(device, token)
    if device is None and not device_id.startswith(DEVICE_ID_PREFIX):
        # The firmware's ids all start ESP32_; anything else (a browser asking for
        # favicon.ico) must not become a machine.
        raise UnknownDevice(
            f"No device {device_id} is registered; register it first.", device_id=device_id
        )
    admit_wifi_request(device, device_id=device_id, address=remote_addr)
    if device is not None:
        mark_seen(device)
        return CheckIn(device=device, has_pending=device.has_pending, registered=False)
    device, _created = register_device(
        raw_id=device_id, protocol=protocol, ip_address=remote_addr or None, address=remote_addr
    )
    log_exchange(
        limited=True,
        direction=Direction.IN,
        transport=Transport.WIFI,
        device=device,
        endpoint=endpoint,
        remote_addr=remote_addr,
        message="poll from an unregistered device: registered it",
        level=LogLevel.WARNING,
    )
    return CheckIn(device=device, has_pending=False, registered=True)


@transaction.atomic
def report_slot_empty(*, device: Device, slot_number: int, note: str = "") -> None:
    """The machine found a slot empty: set its stock to 0 through the ledger and flag it."""
    slot = Slot.objects.filter(device=device, number=slot_number).first()
    if slot is None:
        return
    set_stock(
        slot=slot,
        quantity=0,
        reason=MovementReason.SLOT_EMPTY,
        note=note or "the machine reported the slot empty",
    )
    Slot.objects.filter(pk=slot.pk).update(needs_attention=True)


def mark_disconnected(device: Device) -> None:
    """The device's link is gone: it shows offline at once, not after the offline timeout."""
    now = timezone.now()
    Device.objects.filter(pk=device.pk).update(disconnected_at=now)
    poll_cache.notify([device.device_id])
    device.disconnected_at = now
    publish("device", device_payload(device))


# --- Serial ports (reported by the bridge, steered by staff) ------------------------------


@dataclass(frozen=True)
class PortReport:
    path: str
    vid: int | None = None
    pid: int | None = None
    description: str = ""


def report_serial_ports(reports: list[PortReport]) -> list[SerialPort]:
    """Record the ports the bridge sees now; ports no longer seen are marked absent.

    Live pages hear of it only when something changed (the bridge rescans every few seconds).
    """
    now = timezone.now()
    known = {
        port.path: port for port in SerialPort.objects.filter(path__in=[r.path for r in reports])
    }
    seen, changed = [], False
    for report in reports:
        fields = {
            "vid": report.vid,
            "pid": report.pid,
            "description": report.description[:255],
            "likely_esp32": likely_esp32(report.vid, report.pid),
            "present": True,
        }
        port = known.get(report.path)
        if port is None or any(getattr(port, name) != value for name, value in fields.items()):
            port, _ = SerialPort.objects.update_or_create(
                path=report.path, defaults={**fields, "reported_at": now}
            )
            changed = True
        seen.append(port)
    gone = (
        SerialPort.objects.exclude(path__in=[r.path for r in reports])
        .filter(present=True)
        .update(present=False, is_open=False, reported_at=now)
    )
    if changed or gone:
        publish("ports", {"paths": [r.path for r in reports]})
    return seen


def set_port_state(
    *, path: str, is_open: bool, device: Device | None = None, error: str = ""
) -> None:
    """The bridge opened or closed a port (or failed to)."""
    changes = {"is_open": is_open, "last_error": error[:255], "reported_at": timezone.now()}
    if device is not None:
        changes["device"] = device
    SerialPort.objects.update_or_create(path=path, defaults=changes)
    publish("ports", {"path": path, "is_open": is_open, "error": error[:255]})


def request_port(*, path: str, request: PortRequest) -> SerialPort:
    """Staff ask the bridge to connect, disconnect or decide by itself (it obeys within 1 s)."""
    port, _ = SerialPort.objects.update_or_create(path=path, defaults={"requested": request})
    publish("ports", {"path": path, "requested": request})
    return port
