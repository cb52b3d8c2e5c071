"""The command's state table and the one function that moves it (transactions/commands.py)."""

from itertools import product

import pytest
from django.db import transaction
from django.utils import timezone

from devices.access import DeviceNotApproved
from devices.approval import set_approved
from devices.choices import CommandKind, CommandState
from devices.models import Command, Device
from transactions.choices import TransactionState
from transactions.commands import (
    COMMAND_STAMPS,
    COMMAND_TRANSITIONS,
    can_move_command,
    move_command,
    queue_command,
)
from transactions.exceptions import InvalidTransition
from transactions.models import Transaction
from transactions.services import request_vend

pytestmark = pytest.mark.django_db

STATES = list(CommandState)


def test_nothing_leads_back_to_queued_and_a_command_is_sent_at_most_once():
    assert all(CommandState.QUEUED not in targets for targets in COMMAND_TRANSITIONS.values())
    senders = [source for source, targets in COMMAND_TRANSITIONS.items() if "sent" in targets]
    assert senders == [CommandState.QUEUED]
    # Every state a command can enter has the time it entered stamped.
    entered = set().union(*COMMAND_TRANSITIONS.values())
    assert entered == set(COMMAND_STAMPS)


@pytest.mark.parametrize(("from_state", "to_state"), list(product(STATES, STATES)))
def test_a_command_moves_only_where_the_table_allows(online_device, from_state, to_state):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=1)
    Command.objects.filter(pk=command.pk).update(state=from_state)
    allowed = can_move_command(from_state, to_state)
    if to_state not in COMMAND_STAMPS:  # queued: no move leads there
        assert not allowed
        return
    now = timezone.now()

    moved = move_command(command.pk, to_state, now=now)

    command.refresh_from_db()
    assert moved is allowed
    if allowed:
        assert command.state == to_state
        assert getattr(command, COMMAND_STAMPS[to_state]) == now
    else:
        assert command.state == from_state


def test_of_two_moves_of_one_command_exactly_one_wins(online_device):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=1)

    results = [move_command(command.pk, CommandState.SENT) for _ in range(2)]

    assert results == [True, False]


def test_a_machine_awaiting_approval_is_refused_a_command_and_nothing_is_written(
    online_device, settings
):
    settings.DEVICE_APPROVAL_REQUIRED = True
    Device.objects.filter(pk=online_device.pk).update(approved=False)
    online_device.refresh_from_db()

    with pytest.raises(DeviceNotApproved):
        queue_command(device=online_device, kind=CommandKind.VEND, slot=1)

    assert not Command.objects.exists()


def test_revoking_a_machine_expires_its_queued_vend_in_the_same_transaction(online_device):
    txn = request_vend(device=online_device, slot_number=1)

    with transaction.atomic():
        set_approved(devices=Device.objects.filter(pk=online_device.pk), approved=False)
        # Expired inside the revoking transaction (the approval_revoked receiver).
        assert Command.objects.get(transaction=txn).state == CommandState.EXPIRED

    txn = Transaction.objects.get(pk=txn.pk)
    assert txn.state == TransactionState.EXPIRED
    assert txn.failure_reason == "the machine's approval was revoked"


def test_the_revoke_receiver_is_connected():
    """Without it a revoked machine's queued vends would wait for their TTL, units held."""
    from devices.signals import approval_revoked

    assert approval_revoked.has_listeners(Device)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_staff_resolving_a_vend_while_its_late_confirmation_arrives_never_deadlocks(
    online_device, monkeypatch
):
    """Both take the vend's command and then the vend; resolving took them the other way
    round, and PostgreSQL killed one of the two with 'deadlock detected'."""
    import threading

    from django.db import connection

    from transactions import confirmation, services
    from transactions.confirmation import confirm_vend, flag_unconfirmed
    from transactions.delivery import claim_next_command
    from transactions.services import resolve_unconfirmed

    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's")
    txn = request_vend(device=online_device, slot_number=1)
    command = claim_next_command(device=online_device)
    flag_unconfirmed(command_id=command.pk, reason="no answer")
    # Each side waits for the other between its two locks, where the old order deadlocked.
    meet = threading.Barrier(2, timeout=2)

    def after_meeting(lock):
        def locked(txn_id):
            try:
                meet.wait()
            except threading.BrokenBarrierError:
                pass  # the other side waits on our first lock: the order is right
            return lock(txn_id)

        return locked

    monkeypatch.setattr(services, "lock_transaction", after_meeting(services.lock_transaction))
    monkeypatch.setattr(
        confirmation, "lock_transaction", after_meeting(confirmation.lock_transaction)
    )
    errors = []

    def run(work):
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            connection.close()

    staff = threading.Thread(
        target=run,
        args=(lambda: resolve_unconfirmed(txn=txn, dispensed=True, user=None),),
    )
    machine = threading.Thread(
        target=run,
        args=(
            lambda: confirm_vend(
                raw_id=online_device.device_id, slot=1, success=True, remote_addr="127.0.0.1"
            ),
        ),
    )
    staff.start()
    machine.start()
    staff.join(30)
    machine.join(30)

    # Whoever comes second finds the vend settled: staff are told so (InvalidTransition), a
    # confirmation settles nothing. Neither dies of a deadlock.
    assert [type(e).__name__ for e in errors if not isinstance(e, InvalidTransition)] == []
    assert Transaction.objects.get(pk=txn.pk).state == TransactionState.SUCCEEDED
    assert Command.objects.get(pk=command.pk).state == CommandState.COMPLETED
