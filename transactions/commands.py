"""The command that carries a vend (or a STATUS/RESET) to a machine: its state table, the one
function that moves it, queueing and expiry.

::

    queued ──> sent ──> completed
      │
      └──> expired | cancelled

A command is delivered at most once: nothing leads back to ``queued``, and every move is a
conditional update on the states the table allows into the target, so of two processes
moving the same command exactly one wins. The vend's own state (``Transaction.state``) is
moved beside it by :func:`transactions.lifecycle.transition`, always after the command, in
the same database transaction.

The ``Command`` model stays in ``devices`` (it is the machine's queue, and its table is
``devices_command``); the rules about it live here, beside the vend lifecycle.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.access import DeviceNotApproved, approval_message
from devices.choices import CommandKind
from devices.choices import CommandState as C
from devices.exceptions import CommandNotSupported, DeviceOffline
from devices.models import Command, Device
from vending_site.backends.statements import Select, Update
from vending_site.live.events import publish

from .choices import TransactionState
from .lifecycle import transition
from .models import Transaction

COMMAND_TRANSITIONS: dict[str, frozenset[str]] = {
    C.QUEUED: frozenset({C.SENT, C.EXPIRED, C.CANCELLED}),
    C.SENT: frozenset({C.COMPLETED}),
}
# The timestamp field stamped on entering a state.
COMMAND_STAMPS = {
    C.SENT: "sent_at",
    C.COMPLETED: "completed_at",
    C.EXPIRED: "completed_at",
    C.CANCELLED: "completed_at",
}
# The states a command may be in to move into each state: the table read backwards.
_SOURCES = {
    target: sorted(source for source, targets in COMMAND_TRANSITIONS.items() if target in targets)
    for target in COMMAND_STAMPS
}


def _move_statement(to_state: str) -> Update:
    stamp = COMMAND_STAMPS[to_state]
    return Update(
        lambda pk, at: (
            Command.objects.filter(pk=pk, state__in=_SOURCES[to_state]),
            {"state": to_state, stamp: at},
        ),
        pk=Command._meta.pk,
        at=Command._meta.get_field(stamp),
    )


# Every delivery and confirmation runs one of these: compiled once
# (vending_site.backends.statements).
_MOVES = {to_state: _move_statement(to_state) for to_state in COMMAND_STAMPS}


def can_move_command(from_state: str, to_state: str) -> bool:
    return to_state in COMMAND_TRANSITIONS.get(from_state, frozenset())


def move_command(command_id: int, to_state: C, *, now: datetime | None = None) -> bool:
    """Move one command into ``to_state`` from a state the table allows, stamping the time.

    Returns whether it moved: ``False`` when the command was in no such state (another
    process moved it first, or the move is not allowed from where it is)."""
    return _MOVES[to_state].run(pk=command_id, at=now or timezone.now()) == 1


def lock_command_of(txn_id) -> Command | None:
    """Row-lock the command of a vend (where the database can), before the vend itself:
    every writer takes the two in that order (command, then transaction), so two of them
    never wait on each other."""
    return (
        Command.objects.select_for_update(of=("self",))
        .filter(transaction_id=txn_id)
        .order_by()
        .first()
    )


def move_commands_of(*, txn: Transaction, from_state: C, to_state: C) -> int:
    """Move the command of ``txn`` if it is in ``from_state``; returns how many moved (0, 1)."""
    if not can_move_command(from_state, to_state):
        raise ValueError(f"a command cannot move from {from_state} to {to_state}")
    return Command.objects.filter(transaction=txn, state=from_state).update(
        state=to_state, **{COMMAND_STAMPS[to_state]: timezone.now()}
    )


# --- Queueing -----------------------------------------------------------------------------

COMMANDS_CHANNEL = "vending_commands"  # PostgreSQL NOTIFY channel the serial bridge listens on


def queue_command(
    *,
    device: Device,
    kind: CommandKind,
    slot: int | None = None,
    txn: Transaction | None = None,
    require_online: bool = True,
) -> Command:
    """Queue a command for delivery at the device's next poll (or by its serial link).

    Every path that queues a command (REST, dashboard, admin, demo) comes here, so this is
    the one place a machine awaiting approval is refused; a vend being queued rolls back
    with the refusal."""
    if device.awaiting_approval:
        raise DeviceNotApproved(approval_message(device), device_id=device.device_id)
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


# --- Expiry -------------------------------------------------------------------------------

EXPIRY_BATCH = 500  # commands expired per call; the next call (or sweep) takes the rest


def _due_commands(now: datetime, device: int | None = None):
    due = Command.objects.filter(state=C.QUEUED, expires_at__lte=now)
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
        count += expire_command(command_id=command_id, now=now, reason="")
    return count


@transaction.atomic
def expire_command(*, command_id: int, now: datetime | None = None, reason: str = "") -> int:
    """Expire one queued command (and its vend, returning the unit). Returns 1 or 0.

    ``reason`` is the vend's failure reason; by default, that it was not delivered in time."""
    now = now or timezone.now()
    if not move_command(command_id, C.EXPIRED, now=now):
        return 0
    command = Command.objects.select_related("transaction__device", "transaction__slot").get(
        pk=command_id
    )
    if command.transaction is not None:
        transition(
            command.transaction,
            TransactionState.EXPIRED,
            failure_reason=reason or f"not delivered within {settings.VEND_QUEUE_TTL} s",
        )
    return 1


def expire_commands_of_revoked_machines(*, device_pks: list[int], **_signal) -> int:
    """Expire every queued command of machines whose approval staff revoked (receiver of
    ``devices.signals.approval_revoked``, in the revoking transaction): nothing waiting is
    delivered later, and each vend's reserved unit goes back."""
    queued = Command.objects.filter(device__in=device_pks, state=C.QUEUED)
    return sum(
        expire_command(command_id=command_id, reason="the machine's approval was revoked")
        for command_id in list(queued.values_list("pk", flat=True))
    )
