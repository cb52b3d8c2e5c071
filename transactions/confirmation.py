"""Confirmation: a machine reports how a delivered vend went, and the vend is settled.

Over WiFi the confirmation names only the machine and the slot, so it settles the oldest
delivered, not yet confirmed vend of that slot (PROTOCOL.md); the serial bridge knows which
command it sent and settles that one. Either way the command moves ``sent`` → ``completed``
first (a conditional update: a second confirmation of the same command settles nothing),
then the vend, in one database transaction.
"""

import logging

from django.db import transaction
from django.db.models import Case, IntegerField, Value, When

from devices.access import check_wifi_request
from devices.choices import CommandKind, CommandState, Direction, LogLevel, Transport
from devices.models import Command, Device
from devices.selectors import DEVICE_BY_ID, canonical_id
from devices.services import log_exchange, mark_seen
from vending_site.backends.statements import Select

from .choices import TransactionState
from .commands import move_command
from .lifecycle import lock_transaction, transition
from .models import Transaction

logger = logging.getLogger(__name__)


# A confirmation's read of its command, compiled once (vending_site.backends.statements); its device
# is read with selectors.DEVICE_BY_ID.


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
        if command is None or not move_command(command.pk, CommandState.COMPLETED):
            settled = None  # none awaits it (or a concurrent confirmation took it: SQLite)
        else:
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


# --- For links that know which command they sent (the serial bridge) ---------------------


@transaction.atomic
def settle_vend(*, command_id: int, success: bool, message: str = "") -> Transaction | None:
    """Settle the vend of a command the caller delivered: succeeded, or failed (unit back).

    A conditional update on the command (``sent`` → ``completed``) makes a second settlement
    of the same command a no-op, which returns ``None``.
    """
    if not move_command(command_id, CommandState.COMPLETED):
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
