"""Writes about vends: request, cancel, staff resolution, the sweep, idempotency keys."""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices.access import DeviceNotApproved, approval_message
from devices.choices import FIRMWARE_MAX_SLOT, CommandKind, CommandState
from devices.exceptions import DeviceOffline
from devices.models import Device
from devices.selectors import active_device, get_device
from inventory.choices import MovementReason
from inventory.exceptions import OutOfStock, SlotDisabled, SlotNotConfigured, SlotOutOfRange
from inventory.selectors import price_of
from inventory.services import lock_device_slot, move_stock
from vending_site.backends.statements import Insert, Update
from vending_site.live import events

from .choices import TransactionState
from .commands import expire_due_commands, lock_command_of, move_commands_of, queue_command
from .exceptions import IdempotencyKeyInUse, IdempotencyKeyMismatch, InvalidTransition
from .lifecycle import lock_transaction, record_creation, transition
from .models import IdempotencyKey, Transaction
from .selectors import expired_idempotency_keys

# Rows every vend writes, their INSERTs compiled once (vending_site.backends.statements).
_NEW_TRANSACTION = Insert(Transaction)
_NEW_KEY = Insert(IdempotencyKey)


def request_vend(
    *,
    device: Device,
    slot_number: int,
    user: AbstractBaseUser | None = None,
    idempotency_key: str = "",
    savepoint: bool = True,
) -> Transaction:
    """Reserve one unit of a slot and queue the vend for the device.

    Checks, in order: slot in range, device online, slot configured and enabled, product
    assigned, stock left. The reservation (ledger row), the transaction and the command are
    written in one database transaction holding the slot's row lock, so however many
    requests race for a slot holding N units, exactly N are accepted.

    Called inside a caller's transaction, the vend is a savepoint of it, so a caller may
    catch a refusal and carry on. ``savepoint=False`` spares that savepoint, for a caller
    that rolls its whole transaction back on any failure (:func:`request_vend_once`'s).
    """
    if not 1 <= slot_number <= device.slot_count:
        raise SlotOutOfRange(
            f"Slot {slot_number} does not exist on {device.device_id}; "
            f"it has slots 1 to {device.slot_count}.",
            slot_id=slot_number,
        )
    firmware_max = FIRMWARE_MAX_SLOT.get(device.protocol)
    if firmware_max is not None and slot_number > firmware_max:
        raise SlotOutOfRange(
            f"{device.device_id} runs {device.get_protocol_display()}, which acts only on "
            f"slots 1 to {firmware_max}; slot {slot_number} would never be dispensed.",
            slot_id=slot_number,
        )
    if device.awaiting_approval:
        # Before the slots: a pending machine has none yet, and this is the reason to give.
        raise DeviceNotApproved(approval_message(device), device_id=device.device_id)
    if not device.is_online:
        raise DeviceOffline(
            f"{device.device_id} is offline; it was last seen {_describe(device.last_seen)}.",
            device_id=device.device_id,
        )
    expire_due_commands(device=device)  # expired reservations go back before we count stock
    with transaction.atomic(savepoint=savepoint):
        slot = lock_device_slot(device=device, number=slot_number)
        if slot is None:
            raise SlotNotConfigured(f"Slot {slot_number} on {device.device_id} is not set up.")
        if not slot.enabled:
            raise SlotDisabled(f"Slot {slot_number} on {device.device_id} is disabled.")
        if slot.product is None:
            raise SlotNotConfigured(
                f"Slot {slot_number} on {device.device_id} has no product assigned."
            )
        if slot.quantity < 1:
            raise OutOfStock(
                f"Slot {slot_number} on {device.device_id} ({slot.product.name}) is empty.",
                requested=1,
                available=0,
            )
        now = timezone.now()
        txn = _NEW_TRANSACTION.create(
            device=device,
            slot=slot,
            slot_number=slot_number,
            product=slot.product,
            product_name=slot.product.name,
            product_sku=slot.product.sku,
            price=price_of(slot),  # the price charged, kept whatever changes later
            requested_by=user,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )
        # Its three live events (stock, command, transaction) reach pages in one push.
        with events.batched():
            move_stock(
                slot=slot,
                delta=-1,
                reason=MovementReason.VEND,
                transaction=txn,
                user=user,
                locked=True,  # locked just above: the row is not read a second time
            )
            queue_command(
                device=device,
                kind=CommandKind.VEND,
                slot=slot_number,
                txn=txn,
                require_online=False,
            )
            record_creation(txn, actor=user)
    return txn


@dataclass(frozen=True)
class VendOutcome:
    """What a vend request came to: its transaction, the status to answer with, and whether
    it is an earlier request's answer given again (an Idempotency-Key replay)."""

    transaction: Transaction
    status: int
    replayed: bool = False


def request_vend_once(
    *,
    user: AbstractBaseUser,
    slot_number: int,
    device_id: str | None = None,
    idempotency_key: str | None = None,
    asked: dict | None = None,
    status: int = 202,
) -> VendOutcome:
    """A vend request, at most once per Idempotency-Key: the one service every caller of
    the vend API goes through.

    The vend is :func:`request_vend` on ``device_id`` (default: the active device). With an
    ``idempotency_key`` the key is claimed first (:func:`claim_idempotency_key`): a key
    already used for the same request gives that request's transaction and status back
    (``replayed``), one used for another request raises :class:`IdempotencyKeyMismatch`, one
    still being processed :class:`IdempotencyKeyInUse`. A new key is bound to the vend in
    the vend's own database transaction, so a key never stands for a vend that was rolled
    back; if the device is unknown or the vend is refused, the key is released so the client
    may retry with it.

    ``asked`` is what the request asked for (its body, less what only shapes the answer):
    a retry with the key must ask the same. ``status`` is the answer's, kept for replays.
    """
    key = None
    if idempotency_key is not None:
        fingerprint = request_fingerprint(
            method="POST", path=f"vend/{slot_number}", body=asked or {}
        )
        key = claim_idempotency_key(user=user, key=idempotency_key, fingerprint=fingerprint)
        if not key.in_progress:
            txn = Transaction.objects.select_related("device").get(pk=key.transaction_id)
            return VendOutcome(transaction=txn, status=key.response_status, replayed=True)
    try:
        device = get_device(device_id) if device_id else active_device()
    except Exception:
        if key is not None:
            release_idempotency_key(key=key)
        raise
    txn = _request_vend_binding_key(
        device=device, slot_number=slot_number, user=user, key=key, status=status
    )
    return VendOutcome(transaction=txn, status=status)


def _request_vend_binding_key(
    *,
    device: Device,
    slot_number: int,
    user: AbstractBaseUser | None,
    key: IdempotencyKey | None,
    status: int,
) -> Transaction:
    """:func:`request_vend`, bound to a claimed key in the same database transaction; the
    key is released if the vend is refused."""
    try:
        with transaction.atomic():
            txn = request_vend(
                device=device,
                slot_number=slot_number,
                user=user,
                idempotency_key=key.key if key is not None else "",
                savepoint=False,  # any failure rolls back this whole transaction
            )
            if key is not None:
                complete_idempotency_key(key=key, txn=txn, status=status)
    except Exception:
        if key is not None:
            release_idempotency_key(key=key)
        raise
    return txn


def _describe(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return f"{int((timezone.now() - moment).total_seconds())} s ago"


@transaction.atomic
def cancel_vend(*, txn: Transaction, user: AbstractBaseUser | None = None) -> Transaction:
    """Cancel a vend that has not been delivered yet; the unit is returned."""
    cancelled = move_commands_of(
        txn=txn, from_state=CommandState.QUEUED, to_state=CommandState.CANCELLED
    )
    if not cancelled:
        txn.refresh_from_db(fields=["state"])
        raise InvalidTransition(
            f"Transaction {txn.pk} is {txn.state}; only a queued vend can be cancelled.",
            state=txn.state,
        )
    return transition(txn, TransactionState.CANCELLED, actor=user, note="cancelled")


@transaction.atomic
def resolve_unconfirmed(
    *, txn: Transaction, dispensed: bool, user: AbstractBaseUser | None, note: str = ""
) -> Transaction:
    """Staff settle an ``unconfirmed`` vend: it dispensed (keep the sale) or it did not
    (refund: the unit goes back into stock)."""
    # The command first, as a late confirmation locks them: the other order deadlocked.
    lock_command_of(txn.pk)
    txn = lock_transaction(txn.pk)
    if txn.state != TransactionState.UNCONFIRMED:
        raise InvalidTransition(
            f"Transaction {txn.pk} is {txn.state}; only unconfirmed vends are resolved by staff.",
            state=txn.state,
        )
    move_commands_of(txn=txn, from_state=CommandState.SENT, to_state=CommandState.COMPLETED)
    if dispensed:
        return transition(
            txn, TransactionState.SUCCEEDED, actor=user, note=note or "staff: dispensed"
        )
    return transition(
        txn,
        TransactionState.FAILED,
        actor=user,
        failure_reason=note or "staff: not dispensed, refunded",
    )


@dataclass(frozen=True)
class SweepResult:
    expired: int
    unconfirmed: int


def sweep(*, now: datetime | None = None) -> SweepResult:
    """Expire undelivered commands and flag vends whose confirmation never came.

    Safe to run from cron beside every other process, and beside itself: each step is a
    conditional update, so a vend moved by someone else meanwhile is skipped. A vend
    flagged ``unconfirmed`` keeps its unit reserved and is never sent again.
    """
    now = now or timezone.now()
    expired = expire_due_commands(now=now)
    cutoff = now - timedelta(seconds=settings.VEND_CONFIRM_TIMEOUT)
    unconfirmed = 0
    stale = Transaction.objects.filter(state=TransactionState.SENT, sent_at__lte=cutoff)
    for txn_id in list(stale.values_list("pk", flat=True)[:500]):
        with transaction.atomic():
            txn = lock_transaction(txn_id)
            if txn.state != TransactionState.SENT:
                continue  # confirmed (or otherwise settled) meanwhile
            try:
                transition(
                    txn,
                    TransactionState.UNCONFIRMED,
                    note=f"no confirmation within {settings.VEND_CONFIRM_TIMEOUT} s",
                )
            except InvalidTransition:
                continue  # confirmed (or otherwise settled) meanwhile
            unconfirmed += 1
    return SweepResult(expired=expired, unconfirmed=unconfirmed)


# --- Idempotency keys ------------------------------------------------------------------


def request_fingerprint(*, method: str, path: str, body: object) -> str:
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_idempotency_key(*, user: AbstractBaseUser, key: str, fingerprint: str) -> IdempotencyKey:
    """Reserve ``key`` for this request, or tell what an earlier use of it decided.

    Returns a key that is either new (``in_progress``: go ahead and vend) or completed
    (``transaction`` set: answer with it again). Raises :class:`IdempotencyKeyMismatch`
    when the key was used with another request and :class:`IdempotencyKeyInUse` while the
    first request with it is still being processed.
    """
    now = timezone.now()
    for _attempt in range(3):
        try:
            with transaction.atomic():
                return _NEW_KEY.create(
                    user=user, key=key, fingerprint=fingerprint, created_at=now, locked_at=now
                )
        except IntegrityError:
            pass
        existing = IdempotencyKey.objects.filter(user=user, key=key).first()
        if existing is None:
            continue  # released between our insert and our read; try again
        if existing.created_at < now - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL):
            IdempotencyKey.objects.filter(pk=existing.pk, created_at=existing.created_at).delete()
            continue
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyMismatch(
                "This Idempotency-Key was already used with a different request.",
            )
        if not existing.in_progress:
            return existing
        stale = now - timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT)
        if existing.locked_at < stale and IdempotencyKey.objects.filter(
            pk=existing.pk, transaction__isnull=True, locked_at=existing.locked_at
        ).update(locked_at=now):
            # The first request died before committing its vend (the key is completed in
            # the vend's own transaction), so nothing was sold: this retry takes over.
            existing.locked_at = now
            return existing
        raise IdempotencyKeyInUse(
            "A request with this Idempotency-Key is still being processed; retry later.",
        )
    raise IdempotencyKeyInUse("This Idempotency-Key is contended; retry later.")


# Every vend with a key binds it: compiled once (vending_site.backends.statements).
_BIND_KEY = Update(
    lambda pk, locked_at, transaction, status: (
        IdempotencyKey.objects.filter(pk=pk, transaction__isnull=True, locked_at=locked_at),
        {"transaction": transaction, "response_status": status},
    ),
    pk=IdempotencyKey._meta.pk,
    locked_at=IdempotencyKey._meta.get_field("locked_at"),
    transaction=IdempotencyKey._meta.get_field("transaction"),
    status=IdempotencyKey._meta.get_field("response_status"),
)


def complete_idempotency_key(*, key: IdempotencyKey, txn: Transaction, status: int) -> None:
    """Bind the key to its vend; call inside the vend's transaction so both commit together.

    Fenced by ``locked_at``: if a retry took the key over meanwhile (this request was slow,
    not dead), this request's vend is refused and rolled back, so one key never vends twice.
    """
    bound = _BIND_KEY.run(pk=key.pk, locked_at=key.locked_at, transaction=txn.pk, status=status)
    if bound != 1:
        raise IdempotencyKeyInUse(
            "Another request with this Idempotency-Key took over; this one vended nothing."
        )
    key.transaction, key.response_status = txn, status


def release_idempotency_key(*, key: IdempotencyKey) -> None:
    """Forget a key whose request was refused, so the client may retry with it."""
    IdempotencyKey.objects.filter(
        pk=key.pk, transaction__isnull=True, locked_at=key.locked_at
    ).delete()


def prune_idempotency_keys(*, now: datetime | None = None) -> int:
    """Delete the keys :func:`~transactions.selectors.expired_idempotency_keys` lists."""
    deleted, _ = expired_idempotency_keys(now=now).delete()
    return deleted
