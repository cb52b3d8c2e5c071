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
