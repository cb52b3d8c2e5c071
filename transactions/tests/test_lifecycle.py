"""The vend lifecycle: the state machine, and every path a vend takes through it."""

import json
from datetime import timedelta
from io import StringIO
from itertools import product

import pytest
from django.core.management import call_command
from django.utils import timezone

from devices.choices import CommandState
from devices.models import Command, Device
from devices.tests.helpers import (
    DEVICE_ID,
    confirm,
    ledger_rows,
    ledger_total,
    poll,
    post_json,
    register_body,
)
from inventory.choices import MovementReason
from inventory.models import Slot, StockMovement
from inventory.services import move_stock
from tests.factories import ProductFactory
from transactions.choices import TransactionState as S
from transactions.exceptions import InvalidTransition
from transactions.lifecycle import ALLOWED_TRANSITIONS, transition
from transactions.models import Transaction, TransactionEvent
from transactions.services import (
    cancel_vend,
    request_vend,
    resolve_unconfirmed,
    sweep,
)

pytestmark = pytest.mark.django_db


def slot(device: Device, number: int) -> Slot:
    return Slot.objects.get(device=device, number=number)


def events(txn: Transaction) -> list[tuple[str, str]]:
    return list(
        TransactionEvent.objects.filter(transaction=txn).values_list("from_state", "to_state")
    )


def state_of(txn: Transaction) -> str:
    return Transaction.objects.values_list("state", flat=True).get(pk=txn.pk)


def deliver(api_client, device: Device, slot_number: int = 3) -> Transaction:
    """Request a vend and let the device pick it up with one poll."""
    txn = request_vend(device=device, slot_number=slot_number)
    body = json.loads(poll(api_client).content)
    assert body["transaction_id"] == str(txn.pk)
    txn.refresh_from_db()
    return txn


def age_queue(txn: Transaction) -> None:
    """Let the vend's time to be delivered run out."""
    Command.objects.filter(transaction=txn).update(expires_at=timezone.now() - timedelta(seconds=1))


def age_delivery(txn: Transaction, settings) -> None:
    """Let the vend's time to be confirmed run out."""
    long_ago = timezone.now() - timedelta(seconds=settings.VEND_CONFIRM_TIMEOUT + 1)
    Transaction.objects.filter(pk=txn.pk).update(sent_at=long_ago)
    Command.objects.filter(transaction=txn).update(sent_at=long_ago)


# --- The whole path ---------------------------------------------------------------------------


def test_wifi_vend_goes_register_vend_poll_confirm_to_succeeded_with_its_trail_and_ledger(
    api_client, client_for, user, settings
):
    settings.DEVICE_APPROVAL_REQUIRED = False  # admitted as it registers (admission: elsewhere)
    assert post_json(api_client, "/esp32/register", register_body()).status_code == 200
    device = Device.objects.get(device_id=DEVICE_ID)
    slot_3 = slot(device, 3)
    Slot.objects.filter(pk=slot_3.pk).update(product=ProductFactory(name="Cola"))
    move_stock(slot=slot_3, delta=5, reason=MovementReason.RESTOCK)

    vend = client_for(user).post("/api/v1/vend/3", {}, format="json")

    assert vend.status_code == 202, vend.content
    assert vend.json()["state"] == S.QUEUED
    txn = Transaction.objects.get(pk=vend.json()["id"])
    assert txn.requested_by == user
    command = json.loads(poll(api_client).content)
    assert (command["command"], command["slot"]) == ("VEND", 3)
    assert confirm(api_client).json()["state"] == S.SUCCEEDED

    txn.refresh_from_db()
    assert txn.state == S.SUCCEEDED
    assert txn.product_name == "Cola"
    assert txn.created_at <= txn.sent_at <= txn.completed_at
    assert events(txn) == [("", S.QUEUED), (S.QUEUED, S.SENT), (S.SENT, S.SUCCEEDED)]
    assert slot(device, 3).quantity == 4
    assert ledger_rows(slot_3) == [(MovementReason.RESTOCK, 5), (MovementReason.VEND, -1)]
    # Every slot started empty, so its ledger explains its whole quantity.
    for each in device.slots.all():
        assert ledger_total(each) == each.quantity
    detail = client_for(user).get(f"/api/v1/transactions/{txn.pk}")
    assert detail.json()["state"] == S.SUCCEEDED


# --- Expiry: never delivered ------------------------------------------------------------------


def test_a_vend_not_delivered_in_time_is_expired_by_the_sweep_and_its_unit_returned(
    api_client, online_device
):
    txn = request_vend(device=online_device, slot_number=3)
    age_queue(txn)

    result = sweep()

    assert result.expired == 1
    assert state_of(txn) == S.EXPIRED
    assert Command.objects.get(transaction=txn).state == CommandState.EXPIRED
    assert events(txn) == [("", S.QUEUED), (S.QUEUED, S.EXPIRED)]
    assert slot(online_device, 3).quantity == 5
    assert ledger_rows(slot(online_device, 3)) == [
        (MovementReason.VEND, -1),
        (MovementReason.REFUND, 1),
    ]
    assert poll(api_client).content == b"null"


def test_the_sweep_commands_command_expires_undelivered_vends_and_says_how_many(
    api_client, online_device
):
    txn = request_vend(device=online_device, slot_number=3)
    age_queue(txn)
    out = StringIO()

    call_command("sweep_commands", stdout=out)

    assert "expired 1, unconfirmed 0" in out.getvalue()
    assert state_of(txn) == S.EXPIRED
    assert slot(online_device, 3).quantity == 5
    assert ledger_total(slot(online_device, 3)) == 0
    assert poll(api_client).content == b"null"


def test_a_poll_never_delivers_an_expired_vend_even_before_the_sweep_runs(
    api_client, online_device
):
    txn = request_vend(device=online_device, slot_number=3)
    age_queue(txn)

    assert poll(api_client).content == b"null"
    assert state_of(txn) == S.EXPIRED
    assert slot(online_device, 3).quantity == 5


# --- Unconfirmed: delivered, never confirmed --------------------------------------------------


def test_a_delivered_vend_without_confirmation_becomes_unconfirmed_and_keeps_its_unit(
    api_client, online_device, settings
):
    txn = deliver(api_client, online_device)
    age_delivery(txn, settings)

    result = sweep()

    assert result.unconfirmed == 1
    txn.refresh_from_db()
    assert txn.state == S.UNCONFIRMED
    assert txn.unconfirmed_at is not None
    assert txn.completed_at is None
    assert slot(online_device, 3).quantity == 4
    assert ledger_rows(slot(online_device, 3)) == [(MovementReason.VEND, -1)]


def test_a_vend_still_inside_its_confirmation_window_is_left_alone_by_the_sweep(
    api_client, online_device
):
    txn = deliver(api_client, online_device)

    assert sweep().unconfirmed == 0
    assert state_of(txn) == S.SENT


def test_an_unconfirmed_vend_is_never_delivered_again(api_client, online_device, settings):
    txn = deliver(api_client, online_device)
    age_delivery(txn, settings)
    sweep()

    answers = [poll(api_client).content for _ in range(3)]

    assert answers == [b"null"] * 3
    assert Command.objects.filter(transaction=txn).count() == 1
    assert state_of(txn) == S.UNCONFIRMED


def test_a_late_confirmation_settles_an_unconfirmed_vend_as_succeeded(
    api_client, online_device, settings
):
    txn = deliver(api_client, online_device)
    age_delivery(txn, settings)
    sweep()

    response = confirm(api_client)

    assert response.json()["state"] == S.SUCCEEDED
    assert state_of(txn) == S.SUCCEEDED
    assert events(txn)[-2:] == [(S.SENT, S.UNCONFIRMED), (S.UNCONFIRMED, S.SUCCEEDED)]
    assert slot(online_device, 3).quantity == 4
    assert ledger_rows(slot(online_device, 3)) == [(MovementReason.VEND, -1)]


def test_staff_resolving_an_unconfirmed_vend_as_not_dispensed_refunds_it(
    api_client, online_device, staff, settings
):
    txn = deliver(api_client, online_device)
    age_delivery(txn, settings)
    sweep()
    txn.refresh_from_db()

    resolve_unconfirmed(txn=txn, dispensed=False, user=staff)

    assert state_of(txn) == S.FAILED
    assert Command.objects.get(transaction=txn).state == CommandState.COMPLETED
    assert slot(online_device, 3).quantity == 5
    refund = StockMovement.objects.get(slot=slot(online_device, 3), reason=MovementReason.REFUND)
    assert (refund.delta, refund.user) == (1, staff)
    assert TransactionEvent.objects.get(transaction=txn, to_state=S.FAILED).actor == staff
    # A confirmation arriving after that finds nothing left to settle.
    assert confirm(api_client).json()["status"] == "ignored"
    assert state_of(txn) == S.FAILED


def test_staff_resolving_an_unconfirmed_vend_as_dispensed_keeps_the_sale(
    api_client, online_device, staff, settings
):
    txn = deliver(api_client, online_device)
    age_delivery(txn, settings)
    sweep()
    txn.refresh_from_db()

    resolve_unconfirmed(txn=txn, dispensed=True, user=staff)

    assert state_of(txn) == S.SUCCEEDED
    assert slot(online_device, 3).quantity == 4


def test_only_an_unconfirmed_vend_can_be_resolved_by_staff(api_client, online_device, staff):
    txn = deliver(api_client, online_device)

    with pytest.raises(InvalidTransition):
        resolve_unconfirmed(txn=txn, dispensed=False, user=staff)

    assert state_of(txn) == S.SENT
    assert slot(online_device, 3).quantity == 4


# --- Which vend a confirmation belongs to -----------------------------------------------------


def test_with_two_delivered_vends_on_one_slot_the_first_confirmation_settles_the_oldest(
    api_client, online_device, settings
):
    settings.WIFI_ONE_VEND_AT_A_TIME = False  # PROTOCOL.md's literal rule
    older = deliver(api_client, online_device)
    newer = deliver(api_client, online_device)

    first = confirm(api_client)

    assert first.json()["transaction_id"] == str(older.pk)
    assert (state_of(older), state_of(newer)) == (S.SUCCEEDED, S.SENT)

    second = confirm(api_client)

    assert second.json()["transaction_id"] == str(newer.pk)
    assert state_of(newer) == S.SUCCEEDED
    assert slot(online_device, 3).quantity == 3


# --- transition() -----------------------------------------------------------------------------

FORBIDDEN = [
    (from_state, to_state)
    for from_state, to_state in product(S.values, S.values)
    if to_state not in ALLOWED_TRANSITIONS.get(from_state, frozenset())
]


@pytest.mark.parametrize(("from_state", "to_state"), FORBIDDEN)
def test_a_transition_outside_the_table_is_refused_and_changes_nothing(
    online_device, from_state, to_state
):
    txn = request_vend(device=online_device, slot_number=3)
    Transaction.objects.filter(pk=txn.pk).update(state=from_state)  # set up, not a transition
    txn.refresh_from_db()
    trail, ledger = events(txn), ledger_rows(slot(online_device, 3))

    with pytest.raises(InvalidTransition):
        transition(txn, to_state)

    assert txn.state == from_state
    assert state_of(txn) == from_state
    assert events(txn) == trail
    assert ledger_rows(slot(online_device, 3)) == ledger


def test_the_refused_transitions_include_succeeded_to_failed_and_queued_to_succeeded():
    assert (S.SUCCEEDED, S.FAILED) in FORBIDDEN
    assert (S.QUEUED, S.SUCCEEDED) in FORBIDDEN


def test_a_transition_of_a_stale_object_is_refused_and_changes_nothing(online_device):
    txn = request_vend(device=online_device, slot_number=3)
    stale = Transaction.objects.select_related("device", "slot").get(pk=txn.pk)
    transition(txn, S.SENT)  # someone else moves it first
    trail = events(txn)

    with pytest.raises(InvalidTransition, match="meanwhile"):
        transition(stale, S.CANCELLED)

    assert state_of(txn) == S.SENT
    assert events(txn) == trail
    assert slot(online_device, 3).quantity == 4
    assert ledger_rows(slot(online_device, 3)) == [(MovementReason.VEND, -1)]


# --- Cancel -----------------------------------------------------------------------------------


def test_a_queued_vend_can_be_cancelled_and_its_unit_is_returned(api_client, online_device, user):
    txn = request_vend(device=online_device, slot_number=3, user=user)

    cancel_vend(txn=txn, user=user)

    assert state_of(txn) == S.CANCELLED
    assert Command.objects.get(transaction=txn).state == CommandState.CANCELLED
    assert slot(online_device, 3).quantity == 5
    assert ledger_rows(slot(online_device, 3)) == [
        (MovementReason.VEND, -1),
        (MovementReason.REFUND, 1),
    ]
    assert poll(api_client).content == b"null"


def test_a_delivered_vend_cannot_be_cancelled(api_client, online_device, user):
    txn = deliver(api_client, online_device)

    with pytest.raises(InvalidTransition):
        cancel_vend(txn=txn, user=user)

    assert state_of(txn) == S.SENT
    assert Command.objects.get(transaction=txn).state == CommandState.SENT
    assert slot(online_device, 3).quantity == 4


def test_cancelling_a_delivered_vend_over_rest_answers_409(
    api_client, client_for, online_device, user
):
    txn = request_vend(device=online_device, slot_number=3, user=user)
    poll(api_client)

    response = client_for(user).post(f"/api/v1/transactions/{txn.pk}/cancel")

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert state_of(txn) == S.SENT


# --- The sweep is idempotent ------------------------------------------------------------------


def test_running_the_sweep_twice_is_harmless(api_client, online_device, settings):
    delivered = deliver(api_client, online_device, slot_number=1)
    age_delivery(delivered, settings)
    undelivered = request_vend(device=online_device, slot_number=2)
    age_queue(undelivered)

    first = sweep()
    trail, ledger = TransactionEvent.objects.count(), StockMovement.objects.count()
    second = sweep()

    assert (first.expired, first.unconfirmed) == (1, 1)
    assert (second.expired, second.unconfirmed) == (0, 0)
    assert (TransactionEvent.objects.count(), StockMovement.objects.count()) == (trail, ledger)
    assert (state_of(delivered), state_of(undelivered)) == (S.UNCONFIRMED, S.EXPIRED)
    assert [slot(online_device, n).quantity for n in (1, 2)] == [4, 5]
