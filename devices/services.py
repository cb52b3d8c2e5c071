"""Writes about devices: registration, presence, the active device, and command delivery.

Transports (the HTTP device views, the serial bridge) call these and translate the result
back to bytes; the rules live here.
"""

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone

from inventory.choices import MovementReason
from inventory.models import Slot
from inventory.services import ensure_slots, set_stock
from transactions.choices import TransactionState
from transactions.lifecycle import lock_transaction, transition
from transactions.models import Transaction
from vending_site.events import publish, publish_many
from vending_site.statements import Insert, Select, Update
from vending_site.throttling import count_hits

from . import presence
from .access import admit_wifi_request, canonical_ip, check_wifi_request
from .choices import (
    CommandKind,
    CommandState,
    Direction,
    LogLevel,
    PortRequest,
    Protocol,
    Transport,
)
from .exceptions import CommandNotSupported, DeviceOffline, UnknownDevice
from .models import MAX_SLOTS, Command, CommunicationLog, Device, SerialPort
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
    is not made active until staff approve it (``devices.access.set_approved``). Otherwise
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


def queue_command(
    *,
    device: Device,
    kind: CommandKind,
    slot: int | None = None,
    txn: Transaction | None = None,
    require_online: bool = True,
) -> Command:
    """Queue a command for delivery at the device's next poll (or by its serial link)."""
    if not device.supports(kind):
        raise CommandNotSupported(
            f"{device.device_id} runs {device.get_protocol_display()}, "
            f"which does not act on {kind}.",
            device_id=device.device_id,
        )
    if require_online and not device.is_online:
        raise DeviceOffline(
            f"{device.device_id} is offline (last seen {_ago(device.last_seen)}).",
            device_id=device.device_id,
        )
    now = timezone.now()
    command = Command.objects.create(
        device=device,
        kind=kind,
        slot=slot,
        transaction=txn,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.VEND_QUEUE_TTL),
    )
    publish("command", {"device_id": device.device_id, "id": command.pk, "kind": kind})
    wake_links(device)
    return command


COMMANDS_CHANNEL = "vending_commands"


def wake_links(device: Device) -> None:
    """Wake whatever delivers this device's commands (the serial bridge), on PostgreSQL.

    NOTIFY is delivered when the surrounding transaction commits, and not at all if it rolls
    back, so a listener never hears of a command that does not exist. Elsewhere the bridge
    finds new commands by looking every 50 ms.
    """
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [COMMANDS_CHANNEL, str(device.pk)])


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((timezone.now() - moment).total_seconds())
    return f"{seconds} s ago"


def poll(
    *,
    raw_id: str,
    protocol: Protocol,
    remote_addr: str = "",
    kinds: frozenset[str] | None = None,
    endpoint: str = "",
) -> tuple[Device, Command | None]:
    """A WiFi device asks for work: register it if unknown, note it was seen, and hand it
    the oldest queued command it can act on, claimed so no other poll can get it.

    An idle poll with a known device is one indexed read; its ``last_seen`` refresh is
    written by the process's writer, not by the poll (:func:`mark_seen`).
    """
    device_id = canonical_id(raw_id)
    device = device_for_poll(device_id)
    if device is None and not device_id.startswith(DEVICE_ID_PREFIX):
        # The firmware's ids all start ESP32_; anything else (a browser asking for
        # favicon.ico) must not become a machine.
        raise UnknownDevice(
            f"No device {device_id} is registered; register it first.", device_id=device_id
        )
    # Refused before anything is written: a stranger neither takes a command nor keeps an
    # absent machine looking online, and a flood of new ids stops at the pending cap.
    admit_wifi_request(device, device_id=device_id, address=remote_addr)
    if device is None:
        device, _created = register_device(
            raw_id=device_id,
            protocol=protocol,
            ip_address=remote_addr or None,
            address=remote_addr,
        )
        has_pending, registered_now = False, True
    else:
        has_pending, registered_now = device.has_pending, False
        mark_seen(device)

    def log(message: str, direction: Direction = Direction.IN, level=LogLevel.INFO) -> None:
        log_exchange(
            limited=True,
            direction=direction,
            transport=Transport.WIFI,
            device=device,
            endpoint=endpoint,
            remote_addr=remote_addr,
            message=message,
            level=level,
        )

    if registered_now:
        log("poll from an unregistered device: registered it", level=LogLevel.WARNING)
    command = (
        deliver_next_command(device=device, kinds=kinds, endpoint=endpoint, remote_addr=remote_addr)
        if has_pending
        else None
    )
    if command is None and settings.LOG_IDLE_POLLS:
        log("poll: no command", level=LogLevel.DEBUG)
    return device, command


def deliver_next_command(
    *,
    device: Device,
    kinds: frozenset[str] | None = None,
    endpoint: str = "",
    remote_addr: str = "",
) -> Command | None:
    """Claim the next command for a WiFi poll's answer (see :func:`claim_next_command`) and
    log it as sent.

    With ``WIFI_ONE_VEND_AT_A_TIME``: the deployed firmware works one vend at a time and
    confirms it before it polls again, so a vend still waiting for its confirmation when the
    machine is handed the next one was never in its hands: the answer that carried it was
    lost (a worker killed mid-answer, a reply after the firmware's 3 s timeout). It is
    flagged ``unconfirmed`` for staff here, at once, because a confirmation names only a
    slot: left ``sent``, it would be the oldest candidate and take the confirmation of the
    vend the machine really dispensed (or, when its confirmation was lost, never settled
    it). On by default; off, PROTOCOL.md's literal rule applies: "the oldest delivered, not
    yet confirmed".
    """
    # One transaction for the claim and everything written about it: if any of it fails
    # (the database goes away between the claim and its log row), the claim rolls back and
    # the command stays queued for the next poll; it is never `sent` in an answer that
    # became an error. After the commit only the answer's bytes are left to send.
    with transaction.atomic():
        command = claim_next_command(device=device, kinds=kinds)
        if command is not None:
            log_exchange(
                direction=Direction.OUT,
                transport=Transport.WIFI,
                device=device,
                endpoint=endpoint,
                remote_addr=remote_addr,
                message=json.dumps(command.as_wire()),
            )
            if command.kind == CommandKind.VEND and settings.WIFI_ONE_VEND_AT_A_TIME:
                _flag_vends_the_machine_never_got(device=device, delivered=command)
    return command


def _flag_vends_the_machine_never_got(*, device: Device, delivered: Command) -> None:
    unanswered = (
        Command.objects.filter(
            device=device,
            kind=CommandKind.VEND,
            state=CommandState.SENT,
            transaction__state=TransactionState.SENT,
            sent_at__lte=delivered.sent_at,
        )
        .exclude(pk=delivered.pk)
        .values_list("pk", flat=True)
    )
    for command_id in list(unanswered):
        flag_unconfirmed(
            command_id=command_id,
            reason=(
                "the machine asked for its next command without confirming this one: the "
                "answer that carried it never reached it"
            ),
        )


def _next_command(device: int, now: datetime, **only):
    """The oldest deliverable queued command of ``device`` (of those ``only`` selects),
    row-locked with SKIP LOCKED where the database can (SQLite has no row locks; Django
    leaves them out there)."""
    return (
        Command.objects.filter(device=device, state=CommandState.QUEUED, expires_at__gt=now, **only)
        .order_by("created_at", "id")
        .select_for_update(skip_locked=True, of=("self",))[:1]
    )


# Every poll that delivers a vend runs these: compiled once (vending_site.statements).
_NEXT_COMMAND = Select(
    _next_command,
    device=Command._meta.get_field("device"),
    now=Command._meta.get_field("expires_at"),
)
_NEXT_COMMAND_OF_KIND = Select(
    lambda device, now, kind: _next_command(device, now, kind=kind),
    device=Command._meta.get_field("device"),
    now=Command._meta.get_field("expires_at"),
    kind=Command._meta.get_field("kind"),
)
_CLAIM_COMMAND = Update(
    lambda pk, sent_at: (
        Command.objects.filter(pk=pk, state=CommandState.QUEUED),
        {"state": CommandState.SENT, "sent_at": sent_at},
    ),
    pk=Command._meta.pk,
    sent_at=Command._meta.get_field("sent_at"),
)


def claim_next_command(*, device: Device, kinds: frozenset[str] | None = None) -> Command | None:
    """Mark the oldest deliverable queued command of ``device`` as sent, and return it.

    The claim is a conditional update (``state = queued``), so with any number of web
    workers or bridges exactly one of them gets a command. On PostgreSQL the candidate row
    is locked with SKIP LOCKED so concurrent pollers do not queue behind each other.
    Expired commands are never delivered; they are expired here on the way.
    """
    now = timezone.now()
    if device.awaiting_approval:
        # A vend queued in the instant a revoke committed is not handed over; it expires.
        return None
    # No savepoint: inside deliver_next_command's transaction a failure rolls it all back.
    with transaction.atomic(savepoint=False):
        if kinds is None:
            command = _NEXT_COMMAND.first(device=device.pk, now=now)
        elif len(kinds) == 1:
            (kind,) = kinds
            command = _NEXT_COMMAND_OF_KIND.first(device=device.pk, now=now, kind=kind)
        else:
            command = _next_command(device.pk, now, kind__in=kinds).first()
        if command is not None:
            if _CLAIM_COMMAND.run(pk=command.pk, sent_at=now) != 1:
                command = None
            else:
                command.state, command.sent_at = CommandState.SENT, now
                if command.kind != CommandKind.VEND:
                    # Nothing confirms STATUS or RESET over WiFi: delivery completes them.
                    _COMPLETE_COMMAND.run(pk=command.pk, completed_at=now)
                    command.state = CommandState.COMPLETED
                if command.transaction_id is not None:
                    # Locked as every decider of a vend's state locks it (after its command,
                    # as the confirmation and the sweep do); the move below would lock it.
                    txn = lock_transaction(command.transaction_id)
                    # No savepoint: a refused move rolls the whole claim back.
                    transition(
                        txn, TransactionState.SENT, note="delivered to device", savepoint=False
                    )
    if command is None:
        expire_due_commands(device=device, now=now)
    return command


EXPIRY_BATCH = 500  # commands expired per call; the next call (or sweep) takes the rest


def _due_commands(now: datetime, device: int | None = None):
    due = Command.objects.filter(state=CommandState.QUEUED, expires_at__lte=now)
    if device is not None:
        due = due.filter(device=device)
    return due.values_list("pk")[:EXPIRY_BATCH]


# Every vend request looks for its machine's due commands first: compiled once.
_DUE_COMMANDS_OF_DEVICE = Select(
    _due_commands,
    now=Command._meta.get_field("expires_at"),
    device=Command._meta.get_field("device"),
)


def expire_due_commands(*, device: Device | None = None, now: datetime | None = None) -> int:
    """Expire queued commands whose time to be delivered has passed; returns how many."""
    now = now or timezone.now()
    if device is None:
        due = list(_due_commands(now))
    else:
        due = _DUE_COMMANDS_OF_DEVICE.all(now=now, device=device.pk)
    count = 0
    for (command_id,) in due:
        count += expire_command(command_id=command_id, now=now)
    return count


@transaction.atomic
def expire_command(*, command_id: int, now: datetime | None = None) -> int:
    """Expire one queued command (and its vend, returning the unit). Returns 1 or 0."""
    now = now or timezone.now()
    expired = Command.objects.filter(pk=command_id, state=CommandState.QUEUED).update(
        state=CommandState.EXPIRED, completed_at=now
    )
    if expired:
        command = Command.objects.select_related("transaction__device", "transaction__slot").get(
            pk=command_id
        )
        if command.transaction is not None:
            transition(
                command.transaction,
                TransactionState.EXPIRED,
                failure_reason=f"not delivered within {settings.VEND_QUEUE_TTL} s",
            )
    return expired


# A confirmation's reads and its command's completion, compiled once
# (vending_site.statements); its device is read with selectors.DEVICE_BY_ID.


def _confirmable_commands(device: int, slot: int):
    """The delivered VEND commands of ``device`` for ``slot`` whose vend awaits its
    confirmation: those still inside their window first, then those already flagged
    ``unconfirmed``; oldest first. Row-locked where the database can."""
    return (
        Command.objects.filter(
            device=device,
            kind=CommandKind.VEND,
            slot=slot,
            state=CommandState.SENT,
            transaction__state__in=[TransactionState.SENT, TransactionState.UNCONFIRMED],
        )
        .annotate(
            late=Case(
                When(transaction__state=TransactionState.SENT, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .order_by("late", "sent_at", "id")
        .select_for_update(of=("self",))[:1]  # no FOR UPDATE where Django has none (SQLite)
    )


_CONFIRMABLE_COMMAND = Select(
    _confirmable_commands,
    device=Command._meta.get_field("device"),
    slot=Command._meta.get_field("slot"),
)
_COMPLETE_COMMAND = Update(
    lambda pk, completed_at: (
        Command.objects.filter(pk=pk),
        {"state": CommandState.COMPLETED, "completed_at": completed_at},
    ),
    pk=Command._meta.pk,
    completed_at=Command._meta.get_field("completed_at"),
)


def confirm_vend(
    *,
    raw_id: str,
    slot: int,
    success: bool,
    message: str = "",
    device_timestamp: int | None = None,
    transport: Transport = Transport.WIFI,
    endpoint: str = "",
    remote_addr: str = "",
    raw_message: str = "",
) -> Transaction | None:
    """Settle the vend a device reports on, or log that nothing matched.

    The confirmation carries no command id, so it belongs to the oldest delivered, not
    yet confirmed vend for that device and slot: one still inside its confirmation window
    first, else the oldest already flagged ``unconfirmed`` (a late confirmation settles it).
    Returns the settled transaction, or ``None`` when nothing matched.
    """
    device_id = canonical_id(raw_id)
    device = DEVICE_BY_ID.first(device_id=device_id)
    if device is not None and transport == Transport.WIFI:
        check_wifi_request(device, address=remote_addr)
    log_exchange(
        limited=True,
        direction=Direction.IN,
        transport=transport,
        device=device,
        device_key=device_id,
        endpoint=endpoint,
        remote_addr=remote_addr,
        message=raw_message or f"confirm slot {slot} success={success} {message}",
    )
    if device is None:
        _log_unmatched(device_id, transport, endpoint, remote_addr, "unknown device")
        return None
    mark_seen(device)
    with transaction.atomic():
        command = _CONFIRMABLE_COMMAND.first(device=device.pk, slot=slot)
        if command is None:
            settled = None
        else:
            _COMPLETE_COMMAND.run(pk=command.pk, completed_at=timezone.now())
            # Locked, so a sweep flagging it meanwhile waits; if the sweep got there first,
            # the vend is `unconfirmed` now and the confirmation still settles it.
            settled = lock_transaction(command.transaction_id)
            stamp = f" (device clock {device_timestamp} ms)" if device_timestamp is not None else ""
            # No savepoint: any failure rolls the whole confirmation back.
            if success:
                transition(
                    settled,
                    TransactionState.SUCCEEDED,
                    note=f"{message}{stamp}".strip(),
                    savepoint=False,
                )
            else:
                transition(
                    settled,
                    TransactionState.FAILED,
                    failure_reason=message or "the machine reported a failed vend",
                    note=f"{message}{stamp}".strip(),
                    savepoint=False,
                )
    if settled is None:
        _log_unmatched(device_id, transport, endpoint, remote_addr, f"no vend awaits slot {slot}")
    return settled


def _log_unmatched(
    device_id: str, transport: Transport, endpoint: str, remote_addr: str, why: str
) -> None:
    logger.warning("confirmation from %s ignored: %s", device_id, why)
    log_exchange(
        limited=True,
        direction=Direction.IN,
        transport=transport,
        device=Device.objects.filter(device_id=device_id).first(),
        device_key=device_id,
        endpoint=endpoint,
        remote_addr=remote_addr,
        message=f"confirmation ignored: {why}",
        level=LogLevel.WARNING,
    )


# --- For links that know which command they sent (the serial bridge) ----------------------


@transaction.atomic
def settle_vend(*, command_id: int, success: bool, message: str = "") -> Transaction | None:
    """Settle the vend of a command the caller delivered: succeeded, or failed (unit back).

    A conditional update on the command (``sent`` → ``completed``) makes a second settlement
    of the same command a no-op, which returns ``None``.
    """
    completed = Command.objects.filter(pk=command_id, state=CommandState.SENT).update(
        state=CommandState.COMPLETED, completed_at=timezone.now()
    )
    if not completed:
        return None
    txn_id = Command.objects.values_list("transaction_id", flat=True).get(pk=command_id)
    if txn_id is None:
        return None
    txn = lock_transaction(txn_id)
    if txn.state not in (TransactionState.SENT, TransactionState.UNCONFIRMED):
        return None
    if success:
        return transition(txn, TransactionState.SUCCEEDED, note=message)
    return transition(
        txn, TransactionState.FAILED, failure_reason=message or "the machine reported a failure"
    )


@transaction.atomic
def flag_unconfirmed(*, command_id: int, reason: str) -> Transaction | None:
    """The outcome of a delivered vend is unknown (no answer, link lost, device rebooted):
    keep the unit reserved and flag the vend for staff. It is never sent again."""
    txn_id = Command.objects.values_list("transaction_id", flat=True).get(pk=command_id)
    if txn_id is None:
        return None
    txn = lock_transaction(txn_id)
    if txn.state != TransactionState.SENT:
        return None
    return transition(txn, TransactionState.UNCONFIRMED, note=reason)


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
