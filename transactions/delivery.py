"""Delivery: a WiFi poll's answer, and the claim that hands a machine its next command.

A command is claimed with a conditional update (``queued`` → ``sent``), so with any number
of web workers or bridges exactly one of them delivers it; the vend moves to ``sent`` in the
same database transaction, and the log row that records the delivery too. The transports
(``devices.api.device_views`` for WiFi, ``devices.serial_bridge`` for USB) call these and
turn the command into bytes.
"""

import json
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.choices import CommandKind, CommandState, Direction, LogLevel, Protocol, Transport
from devices.models import Command, Device
from devices.services import check_in, log_exchange
from vending_site.backends.statements import Select

from .choices import TransactionState
from .commands import expire_due_commands, move_command
from .confirmation import flag_unconfirmed
from .lifecycle import lock_transaction, transition


def poll(
    *,
    raw_id: str,
    protocol: Protocol,
    remote_addr: str = "",
    kinds: frozenset[str] | None = None,
    endpoint: str = "",
) -> tuple[Device, Command | None]:
    """A WiFi machine asks for work: admit it, register it if unknown, note it was seen
    (:func:`devices.services.check_in`), and hand it the oldest queued command it can act
    on, claimed so no other poll can get it. An idle poll of a known machine is one
    indexed read, or none while this process keeps it (``devices.poll_cache``)."""
    visit = check_in(
        raw_id=raw_id,
        protocol=protocol,
        remote_addr=remote_addr,
        endpoint=endpoint,
    )
    device = visit.device
    command = (
        deliver_next_command(device=device, kinds=kinds, endpoint=endpoint, remote_addr=remote_addr)
        if visit.has_pending
        else None
    )
    if command is None and settings.LOG_IDLE_POLLS:
        log_exchange(
            limited=True,
            direction=Direction.IN,
            transport=Transport.WIFI,
            device=device,
            endpoint=endpoint,
            remote_addr=remote_addr,
            message="poll: no command",
            level=LogLevel.DEBUG,
        )
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


# Every poll that delivers a vend runs these: compiled once (vending_site.backends.statements).
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
            if not move_command(command.pk, CommandState.SENT, now=now):
                command = None
            else:
                command.state, command.sent_at = CommandState.SENT, now
                if command.kind != CommandKind.VEND:
                    # Nothing confirms STATUS or RESET over WiFi: delivery completes them.
                    move_command(command.pk, CommandState.COMPLETED, now=now)
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
