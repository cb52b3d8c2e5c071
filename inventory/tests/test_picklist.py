"""The pick-list selector (``inventory.picklist``) against the hand-computed fleet of
``picklist_data``: units to load, the van's totals, the stop order and the visit forecast."""

from datetime import timedelta
from decimal import Decimal

import pytest

from inventory import picklist
from inventory.tests.picklist_data import TODAY, VISIT, ZONE, build_fleet
from vending_site.http.errors import InvalidRequest


@pytest.fixture
def fleet(db, settings):
    settings.TIME_ZONE = ZONE
    return build_fleet()


def rows(picks) -> list[tuple]:
    return [
        (machine.device_id, slot.number, slot.product, slot.quantity, slot.fill_to, slot.to_load)
        for machine in picks.machines
        for slot in machine.slots
    ]


def totals(picks) -> list[tuple]:
    return [(t.product, t.slots, t.to_load, t.expected_by_visit) for t in picks.totals]


def test_a_route_lists_its_machines_in_stop_order_with_units_to_fill_to_par(fleet):
    picks = picklist.pick_list(route=fleet.north.pk, on=TODAY)

    assert [(m.device_id, m.location, m.stop) for m in picks.machines] == [
        ("ESP32_000000000001", "Bakery", 1),
        ("ESP32_000000000003", "Bakery", 1),
        ("ESP32_000000000002", "Harbour", 2),
    ]
    assert rows(picks) == [
        ("ESP32_000000000001", 1, "Cola", 0, 8, 8),
        ("ESP32_000000000001", 2, "Water", 5, 10, 5),
        ("ESP32_000000000003", 1, "Water", 12, 12, 0),
        ("ESP32_000000000002", 1, "Cola", 3, 10, 7),
        ("ESP32_000000000002", 2, "Chips", 8, 6, 0),  # above its PAR: nothing, not -2
    ]
    assert totals(picks) == [("Chips", 1, 0, None), ("Cola", 2, 15, None), ("Water", 2, 5, None)]
    assert picks.to_load == 20
    assert [m.to_load for m in picks.machines] == [13, 0, 7]
    assert picks.machines[0].slots[0].sold_28d is None  # no forecast without a visit


def test_the_stop_is_the_asked_routes_not_another_routes(fleet):
    picks = picklist.pick_list(route=fleet.south.pk, on=TODAY)

    assert [(m.device_id, m.stop) for m in picks.machines] == [("ESP32_000000000002", 1)]


def test_a_location_and_named_machines_list_only_those(fleet):
    by_location = picklist.pick_list(location=fleet.bakery.pk, on=TODAY)
    by_machines = picklist.pick_list(
        machines=["ESP32_000000000009", "ESP32_000000000002"], on=TODAY
    )

    assert [m.device_id for m in by_location.machines] == [
        "ESP32_000000000001",
        "ESP32_000000000003",
    ]
    assert by_location.machines[0].stop is None
    assert [m.device_id for m in by_machines.machines] == [
        "ESP32_000000000002",
        "ESP32_000000000009",
    ]
    assert rows(by_machines)[-1] == ("ESP32_000000000009", 1, "Cola", 1, 10, 9)


def test_a_visit_forecasts_the_sales_of_the_last_28_days_until_then(fleet):
    picks = picklist.pick_list(route=fleet.north.pk, visit=VISIT, on=TODAY)

    assert picks.days_until_visit == 3
    assert (picks.window_first, picks.window_last) == (TODAY - timedelta(28), TODAY - timedelta(1))
    forecast = [
        (s.product, s.sold_28d, s.daily_average, s.expected_by_visit, s.at_visit, s.to_load)
        for m in picks.machines
        for s in m.slots
    ]
    assert forecast == [
        ("Cola", 28, Decimal("1.00"), Decimal("3.0"), 0, 8),
        ("Water", 10, Decimal("0.36"), Decimal("1.1"), 3, 7),
        ("Water", 1, Decimal("0.04"), Decimal("0.1"), 11, 1),
        ("Cola", 14, Decimal("0.50"), Decimal("1.5"), 1, 9),
        ("Chips", 0, Decimal("0.00"), Decimal("0.0"), 8, 0),
    ]
    assert totals(picks) == [
        ("Chips", 1, 0, Decimal("0.0")),
        ("Cola", 2, 17, Decimal("4.5")),
        ("Water", 2, 8, Decimal("1.2")),
    ]
    assert picks.to_load == 25


def test_a_visit_today_forecasts_nothing_and_loads_as_without_a_visit(fleet):
    today = picklist.pick_list(route=fleet.north.pk, visit=TODAY, on=TODAY)
    plain = picklist.pick_list(route=fleet.north.pk, on=TODAY)

    assert rows(today) == rows(plain)
    assert {s.expected_by_visit for m in today.machines for s in m.slots} == {Decimal("0.0")}


def test_a_far_visit_never_loads_more_than_the_fill_to_level(fleet):
    picks = picklist.pick_list(route=fleet.north.pk, visit=TODAY + timedelta(300), on=TODAY)

    assert [(s.at_visit, s.to_load) for m in picks.machines for s in m.slots] == [
        (0, 8),
        (0, 10),
        (1, 11),  # 1 sold in 28 days: 300 x 1 / 28 = 10.7, up to 11 of its 12
        (0, 10),
        (8, 0),  # sold nothing: still above its PAR
    ]


def test_the_pick_list_reads_in_two_queries_with_a_forecast(fleet, django_assert_num_queries):
    with django_assert_num_queries(1):
        picklist.pick_list(route=fleet.north.pk, on=TODAY)
    with django_assert_num_queries(2):
        picklist.pick_list(route=fleet.north.pk, visit=VISIT, on=TODAY)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2026-12-06", "visit 2026-12-06 is in the past (today is 2026-12-07)."),
        ("tomorrow", "visit must be a date as YYYY-MM-DD, not 'tomorrow'."),
        ("2026-13-01", "visit must be a date as YYYY-MM-DD, not '2026-13-01'."),
        ("2028-12-08", "visit 2028-12-08 is more than 366 days ahead."),
    ],
)
def test_a_bad_visit_date_is_refused_with_the_reason(raw, message):
    with pytest.raises(InvalidRequest) as refused:
        picklist.parse_visit(raw, on=TODAY)
    assert refused.value.message == message


def test_no_visit_and_a_visit_today_are_accepted():
    assert picklist.parse_visit(None, on=TODAY) is None
    assert picklist.parse_visit("", on=TODAY) is None
    assert picklist.parse_visit("2026-12-07", on=TODAY) == TODAY


def test_the_csv_rows_hold_the_van_first_then_every_slot(fleet):
    picks = picklist.pick_list(route=fleet.north.pk, visit=VISIT, on=TODAY)

    header, *body = list(picklist.csv_rows(picks))

    assert header[0] == "row" and header[-1] == "to_load"
    assert [row[0] for row in body] == ["van"] * 3 + ["slot"] * 5
    assert body[1][6:8] == ["Cola", "COLA"] and body[1][-1] == 17
    assert body[3][:6] == ["slot", "ESP32_000000000001", "Bakery front", "Bakery", 1, 1]
