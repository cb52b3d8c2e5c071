"""The vend state machine. Every change of ``Transaction.state`` goes through :func:`transition`.

::

    queued ──> sent ──> succeeded | failed | unconfirmed
      │                              unconfirmed ──> succeeded | failed
      └──> expired | cancelled

Entering ``failed``, ``expired`` or ``cancelled`` returns the reserved unit to its slot
(ledger ``refund``); ``succeeded`` and ``unconfirmed`` keep it taken. Nothing leads back to
``queued`` or ``sent``: a delivered vend is never sent again, because that could dispense twice.
"""

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction as db_transaction
from django.utils import timezone

from inventory.choices import MovementReason
from inventory.services import move_stock
from vending_site.backends.statements import Insert, Select, Update
from vending_site.live.events import publish
from vending_site.notify.events import emit
from vending_site.observability import logging as vlog
from vending_site.observability import metrics

from .choices import FINAL_STATES
from .choices import TransactionState as S
from .exceptions import InvalidTransition
from .models import Transaction, TransactionEvent

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.SENT, S.EXPIRED, S.CANCELLED}),
    S.SENT: frozenset({S.SUCCEEDED, S.FAILED, S.UNCONFIRMED}),
    S.UNCONFIRMED: frozenset({S.SUCCEEDED, S.FAILED}),
}
RETURNS_UNIT = frozenset({S.FAILED, S.EXPIRED, S.CANCELLED})
# The timestamp field stamped on entering a state.
STAMPS = {
    S.SENT: "sent_at",
    S.UNCONFIRMED: "unconfirmed_at",
    S.SUCCEEDED: "completed_at",
    S.FAILED: "completed_at",
    S.EXPIRED: "completed_at",
    S.CANCELLED: "completed_at",
}
log = vlog.get_logger(__name__)

# Every confirmation locks its vend and moves it: both statements compiled once
# (vending_site.backends.statements).
_LOCK = Select(
    lambda pk: (
        Transaction.objects.select_for_update(of=("self",))
        .select_related("device", "slot")
        .filter(pk=pk)
        .order_by()
    ),
    pk=Transaction._meta.pk,
)
_MOVES: dict[tuple[str, ...], Update] = {}
_NEW_EVENT = Insert(TransactionEvent)


def _move(fields: tuple[str, ...]) -> Update:
    """The conditional UPDATE of a transition that sets ``fields`` (a state, its stamps)."""
    if fields not in _MOVES:
        placeholders = {name: Transaction._meta.get_field(name) for name in fields}
        _MOVES[fields] = Update(
            lambda pk, from_state, **changes: (
                Transaction.objects.filter(pk=pk, state=from_state),
                changes,
            ),
            pk=Transaction._meta.pk,
            from_state=Transaction._meta.get_field("state"),
            **placeholders,
        )
    return _MOVES[fields]


def lock_transaction(txn_id) -> Transaction:
    """The transaction row, locked until the surrounding database transaction ends.

    Whoever decides a vend's next state from its current one (a confirmation, the sweep,
    staff) reads it through this, so two deciders queue instead of one failing on a state
    the other changed meanwhile.
    """
    txn = _LOCK.first(pk=txn_id)
    if txn is None:
        raise Transaction.DoesNotExist("Transaction matching query does not exist.")
    return txn


def can_transition(from_state: str, to_state: str) -> bool:
    return to_state in ALLOWED_TRANSITIONS.get(from_state, frozenset())


def transition(
    txn: Transaction,
    to_state: S,
    *,
    note: str = "",
    actor: AbstractBaseUser | None = None,
    failure_reason: str = "",
    savepoint: bool = True,
) -> Transaction:
    """Move ``txn`` to ``to_state``, or raise :class:`InvalidTransition`.

    The move is a conditional update on the state ``txn`` was read in, so of two processes
    racing to move the same vend exactly one wins and the other gets the error. It stamps
    the state's time, writes a :class:`TransactionEvent`, returns the unit for states that
    give it back, and publishes the change after commit. ``txn`` is updated in place.

    Called inside a caller's transaction, the move is a savepoint of it, so the caller may
    catch a refusal and carry on. ``savepoint=False`` spares that savepoint (two statements)
    for a caller that lets every failure roll its whole transaction back.
    """
    # Every line logged while the vend changes state (ours, the ledger's) names it.
    with db_transaction.atomic(savepoint=savepoint), vlog.bound(transaction_id=str(txn.pk)):
        return _transition(txn, to_state, note=note, actor=actor, failure_reason=failure_reason)


def _transition(
    txn: Transaction,
    to_state: S,
    *,
    note: str,
    actor: AbstractBaseUser | None,
    failure_reason: str,
) -> Transaction:
    from_state = txn.state
    if not can_transition(from_state, to_state):
        raise InvalidTransition(
            f"Transaction {txn.pk} is {from_state}; it cannot become {to_state}.",
            state=from_state,
        )
    now = timezone.now()
    changes = {"state": to_state, "updated_at": now, STAMPS[to_state]: now}
    if failure_reason:
        changes["failure_reason"] = failure_reason[:255]
    updated = _move(tuple(changes)).run(pk=txn.pk, from_state=from_state, **changes)
    if updated != 1:
        current = Transaction.objects.filter(pk=txn.pk).values_list("state", flat=True).first()
        raise InvalidTransition(
            f"Transaction {txn.pk} changed to {current} meanwhile; it cannot become {to_state}.",
            state=current,
        )
    for field, value in changes.items():
        setattr(txn, field, value)
    _NEW_EVENT.create(
        transaction=txn,
        from_state=from_state,
        to_state=to_state,
        note=(note or failure_reason)[:255],
        actor=actor,
        created_at=now,
    )
    if to_state in RETURNS_UNIT:
        move_stock(
            slot=txn.slot,
            delta=1,
            reason=MovementReason.REFUND,
            transaction=txn,
            user=actor,
            note=f"vend {to_state}",
            clamp=True,
        )
    publish("transaction", transaction_event_payload(txn))
    _emit_outcome(txn, from_state)
    log.info("vend_transition", from_state=from_state, to_state=to_state, note=note)
    count = _metrics_callback(to_state, txn.created_at, now)
    if count is not None:
        db_transaction.on_commit(count, robust=True)  # a metrics failure never fails a vend
    return txn


# The vend's webhook event on entering each state (sent is the machine's business, not news).
VEND_EVENTS = {
    S.SUCCEEDED: "vend.succeeded",
    S.FAILED: "vend.failed",
    S.UNCONFIRMED: "vend.unconfirmed",
    S.EXPIRED: "vend.expired",
    S.CANCELLED: "vend.cancelled",
}


def _emit_outcome(txn: Transaction, from_state: str) -> None:
    """Tell subscribers, in the vend's own transaction: its outcome and, for a vend that was
    unconfirmed, that it was resolved (``vend.resolved`` after ``vend.succeeded``/``failed``)."""
    event_type = VEND_EVENTS.get(txn.state)
    if event_type is None:
        return
    data = vend_webhook_data(txn)
    subject = f"vend:{txn.pk}"
    tags = {"device": txn.device.device_id, "location": txn.device.location_id}
    emit(event_type, data, subject=subject, tags=tags)
    if from_state == S.UNCONFIRMED:
        emit("vend.resolved", data, subject=subject, tags=tags)


def vend_webhook_data(txn: Transaction) -> dict:
    """What an integrator learns of a vend: enough to match it to its payment and settle it."""
    return {
        "id": str(txn.pk),
        "state": txn.state,
        "machine": txn.device.device_id,
        "slot": txn.slot_number,
        "product": txn.product_name,
        "sku": txn.product_sku,
        "price": str(txn.price),
        "failure_reason": txn.failure_reason,
        "idempotency_key": txn.idempotency_key or "",
        "requested_at": txn.created_at.isoformat(),
        "completed_at": txn.completed_at.isoformat() if txn.completed_at else None,
    }


def _metrics_callback(to_state: str, requested_at, settled_at):
    """Counted after commit only, so a rolled-back transition is never counted."""
    if to_state in FINAL_STATES:
        return lambda: metrics.record_vend_outcome(
            outcome=to_state, requested_at=requested_at, settled_at=settled_at
        )
    if to_state == S.UNCONFIRMED:
        return metrics.record_unconfirmed
    return None


def record_creation(txn: Transaction, *, actor: AbstractBaseUser | None = None) -> None:
    """The first event of a new transaction (∅ → queued)."""
    log.info("vend_requested", transaction_id=str(txn.pk), slot=txn.slot_number)
    _NEW_EVENT.create(
        transaction=txn, from_state="", to_state=txn.state, actor=actor, created_at=txn.created_at
    )
    publish("transaction", transaction_event_payload(txn))


def transaction_event_payload(txn: Transaction) -> dict:
    return {
        "id": str(txn.pk),
        "state": txn.state,
        "device_id": txn.device.device_id,
        "slot": txn.slot_number,
        "product": txn.product_name,
        "failure_reason": txn.failure_reason,
        "updated_at": txn.updated_at.isoformat(),
        # Who asked: chooses which sockets are sent it (vending_site.live.audience), never shown.
        "requested_by": txn.requested_by_id,
    }
