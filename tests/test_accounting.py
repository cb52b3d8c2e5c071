"""The fault tests' accounting checks themselves: they pass on books that add up and name
the slot, the vend and the numbers when they do not."""

import pytest
from django.utils import timezone

from inventory.choices import MovementReason
from inventory.models import Slot
from inventory.services import move_stock
from tests import accounting
from tests.accounting import Dispense, SlotFigures, Vend, count_outcomes
from tests.factories import stocked_device
from transactions.choices import TransactionState
from transactions.lifecycle import transition
from transactions.services import request_vend

DEVICE = "ESP32_ACC0000001"


def test_stock_that_adds_up_passes():
    accounting.check_stock(
        [
            SlotFigures(
                slot="M slot 1",
                start=5,
                final=5,
                reserved=3,
                returned=1,
                other={"restock": 2},
                ledger=0,
            )
        ]
    )


def test_stock_that_does_not_add_up_names_the_slot_and_the_numbers():
    figures = SlotFigures(
        slot="M slot 2", start=5, final=3, reserved=1, returned=0, ledger=-2, other={"restock": 0}
    )
    with pytest.raises(AssertionError) as failure:
        accounting.check_stock([figures])
    text = str(failure.value)
    assert "M slot 2: start 5 - 1 reserved + 0 returned" in text
    assert "= 4, but the slot holds 3" in text
    assert "M slot 2: start 5 + ledger -2 = 3" not in text  # the ledger agrees with the slot


def test_figures_from_a_report_are_accepted_as_dicts():
    accounting.check_stock([{"slot": "M slot 1", "start": 2, "final": 2}])


@pytest.mark.django_db
def test_the_database_figures_explain_vends_refunds_and_restocks():
    device = stocked_device(DEVICE, quantity=5, last_seen=timezone.now())
    start = accounting.take_start()
    kept = request_vend(device=device, slot_number=1)
    refunded = request_vend(device=device, slot_number=1)
    transition(kept, TransactionState.SENT)
    transition(kept, TransactionState.SUCCEEDED)
    transition(refunded, TransactionState.CANCELLED)
    slot = Slot.objects.get(device=device, number=1)
    move_stock(slot=slot, delta=2, reason=MovementReason.RESTOCK)

    (figures,) = accounting.assert_stock_adds_up(start, devices=[DEVICE])[:1]
    assert (figures.start, figures.final, figures.reserved, figures.returned) == (5, 6, 2, 1)
    assert figures.other == {"restock": 2}

    # A unit returned twice: the books no longer add up, and the vend is named.
    move_stock(slot=slot, delta=1, reason=MovementReason.REFUND, transaction=refunded)
    with pytest.raises(AssertionError) as failure:
        accounting.assert_stock_adds_up(start, devices=[DEVICE])
    assert f"vend {refunded.pk} (cancelled) has ledger rows [-1, 1, 1]" in str(failure.value)
    assert f"{DEVICE} slot 1: start 5 - 2 reserved + 1 returned" in str(failure.value)


def vend(n: int, state: str, slot: int = 1, device: str = "M") -> Vend:
    return Vend(transaction_id=f"t{n}", device_id=device, slot=slot, state=state)


def test_outcomes_match_dispenses_by_vend_id():
    outcomes = count_outcomes(
        [vend(1, "succeeded"), vend(2, "unconfirmed"), vend(3, "failed")],
        [Dispense("M", 1, "t1"), Dispense("M", 1, "t2")],
    )
    outcomes.check()
    assert (outcomes.accepted, outcomes.dispensed) == (3, 2)


def test_lost_duplicated_unexpected_and_free_units_are_each_counted():
    outcomes = count_outcomes(
        [
            vend(1, "succeeded"),  # dispensed twice
            vend(2, "sent"),  # never settled, never dispensed: lost
            vend(3, "succeeded"),  # says succeeded, never dispensed: lost
            vend(4, "expired"),  # refunded, yet dispensed
            vend(5, "unconfirmed"),  # never dispensed, flagged for staff: not lost
            vend(6, None),  # accepted, unknown to the server: lost
        ],
        [
            Dispense("M", 1, "t1"),
            Dispense("M", 1, "t1"),
            Dispense("M", 1, "t4"),
            Dispense("M", 1, "t99"),  # nobody asked
        ],
    )
    assert len(outcomes.duplicated) == 1 and "t1" in outcomes.duplicated[0]
    assert sorted(name[:2] for name in outcomes.lost) == ["t2", "t3", "t6"]
    assert len(outcomes.unexpected) == 1
    assert len(outcomes.dispensed_but_refunded) == 1
    assert len(outcomes.unconfirmed_undelivered) == 1
    assert "lost 3, duplicated 1, unexpected 1" in outcomes.line()
    with pytest.raises(AssertionError, match="lost: 3"):
        outcomes.check()


def test_serial_dispenses_without_ids_are_matched_by_device_and_slot():
    accepted = [vend(1, "unconfirmed"), vend(2, "succeeded"), vend(3, "failed", slot=2)]
    count_outcomes(accepted, [Dispense("M", 1), Dispense("M", 1)]).check()
    twice = count_outcomes(accepted, [Dispense("M", 1)] * 3)
    assert len(twice.duplicated) == 1
    unasked = count_outcomes(accepted, [Dispense("M", 1)] * 2 + [Dispense("M", 4)])
    assert len(unasked.unexpected) == 1
    short = count_outcomes([vend(1, "succeeded"), vend(2, "succeeded")], [Dispense("M", 1)])
    assert len(short.lost) == 1


def test_a_confirmation_credited_to_an_older_undelivered_vend_is_counted_apart():
    outcomes = count_outcomes(
        [vend(1, "succeeded"), vend(2, "unconfirmed"), vend(3, "succeeded", slot=2)],
        [Dispense("M", 1, "t2")],
    )
    assert len(outcomes.credited_to_another_vend) == 1
    assert "t1" in outcomes.credited_to_another_vend[0]
    assert [name[:2] for name in outcomes.lost] == ["t3"]  # no pair on slot 2: lost
