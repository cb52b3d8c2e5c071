"""GET /api/v1/reports/sales: sums against a hand-built set of vends, CSV, bad input, who may
read it, and the number of queries it costs."""

import csv
import io
import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from devices.models import Device
from tests.factories import (
    DeviceFactory,
    ProductFactory,
    SlotFactory,
    UserFactory,
    staff_with_role,
)
from transactions.choices import TransactionState as S
from transactions.models import Transaction
from transactions.reports import Period, sales_report
from vending_site.auth import roles

URL = "/api/v1/reports/sales"
ZONE = "America/New_York"  # UTC-5 in January: 23:30 local is the next day in UTC
PERIOD = {"from": "2026-01-05", "to": "2026-01-07"}  # previous: 2026-01-02 .. 2026-01-04


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(ZONE))


@pytest.fixture
def zone(settings):
    settings.TIME_ZONE = ZONE
    settings.CURRENCY = "CHF"


@pytest.fixture
def fleet(db, zone):
    cola = ProductFactory(sku="COLA", name="Cola", price=Decimal("1.50"))
    water = ProductFactory(sku="WATER", name="Water", price=Decimal("1.00"))
    a, b = DeviceFactory(device_id="ESP32_A", name="Lobby"), DeviceFactory(device_id="ESP32_B")
    slots = {
        "A1": SlotFactory(device=a, number=1, product=cola),
        "A2": SlotFactory(device=a, number=2, product=water),
        "B1": SlotFactory(device=b, number=1, product=cola),  # charged 2.00 there
    }
    price = {"A1": "1.50", "A2": "1.00", "B1": "2.00"}

    def vend(slot: str, state: str, when: str) -> None:
        s = slots[slot]
        Transaction.objects.create(
            device=s.device,
            slot=s,
            slot_number=s.number,
            product=s.product,
            product_name=s.product.name,
            product_sku=s.product.sku,
            price=Decimal(price[slot]),
            state=state,
            created_at=at(when),
        )

    # The period, 2026-01-05 .. 2026-01-07:
    vend("A2", S.FAILED, "2026-01-05 00:00")  # its first instant
    vend("A1", S.SUCCEEDED, "2026-01-05 09:10")
    vend("A1", S.SUCCEEDED, "2026-01-05 09:50")
    vend("A1", S.FAILED, "2026-01-05 10:05")
    vend("B1", S.EXPIRED, "2026-01-06 08:00")
    vend("A1", S.CANCELLED, "2026-01-06 11:00")  # not a sale
    vend("A2", S.SUCCEEDED, "2026-01-06 23:30")  # 04:30 UTC on the 7th: still the 6th
    vend("B1", S.UNCONFIRMED, "2026-01-07 12:00")
    vend("A1", S.QUEUED, "2026-01-07 13:00")  # not a sale
    vend("B1", S.SUCCEEDED, "2026-01-07 23:30")  # the period's last day, late
    # The previous period, 2026-01-02 .. 2026-01-04:
    vend("A2", S.SUCCEEDED, "2026-01-02 00:15")
    vend("A1", S.FAILED, "2026-01-04 23:59")
    # Outside both:
    vend("B1", S.SUCCEEDED, "2026-01-08 00:30")
    vend("A1", S.SUCCEEDED, "2026-01-01 23:30")


@pytest.fixture
def staff_client(db):
    client = APIClient()
    viewer = staff_with_role(roles.VIEWER)
    viewer.get_all_permissions()  # a request reads them once; the budget is the report's
    client.force_authenticate(viewer)
    return client


def figures(vends, revenue, failed=0, unconfirmed=0, expired=0, rate=None) -> dict:
    return {
        "vends": vends,
        "revenue": revenue,
        "failed": failed,
        "unconfirmed": unconfirmed,
        "expired": expired,
        "failure_rate": rate,
    }


NONE = figures(0, "0.00")
TOTALS = figures(4, "6.00", failed=2, unconfirmed=1, expired=1, rate=0.3333)
PREVIOUS = {"from": "2026-01-02", "to": "2026-01-04", "totals": figures(1, "1.00", 1, rate=0.5)}


def report(client, **params):
    response = client.get(URL, {**PERIOD, **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_sales_per_machine_with_totals_and_the_previous_period(fleet, staff_client):
    body = report(staff_client, group_by="machine")

    assert body == {
        "from": "2026-01-05",
        "to": "2026-01-07",
        "group_by": "machine",
        "time_zone": ZONE,
        "currency": "CHF",
        "rows": [
            {
                "machine": "ESP32_A",
                "machine_name": "Lobby",
                **figures(3, "4.00", failed=2, rate=0.4),
                "previous": figures(1, "1.00", failed=1, rate=0.5),
            },
            {
                "machine": "ESP32_B",
                "machine_name": "",
                **figures(1, "2.00", unconfirmed=1, expired=1, rate=0.0),
                "previous": NONE,
            },
        ],
        "totals": TOTALS,
        "previous": PREVIOUS,
    }


def test_sales_per_product_keep_the_sku_and_name_sold(fleet, staff_client):
    body = report(staff_client, group_by="product")

    assert body["rows"] == [
        {
            "sku": "COLA",
            "product": "Cola",
            **figures(3, "5.00", failed=1, unconfirmed=1, expired=1, rate=0.25),
            "previous": figures(0, "0.00", failed=1, rate=1.0),
        },
        {
            "sku": "WATER",
            "product": "Water",
            **figures(1, "1.00", failed=1, rate=0.5),
            "previous": figures(1, "1.00", rate=0.0),
        },
    ]
    assert body["totals"] == TOTALS and body["previous"] == PREVIOUS


def test_sales_per_slot_come_by_revenue(fleet, staff_client):
    body = report(staff_client, group_by="slot")

    assert body["rows"] == [
        {
            "machine": "ESP32_A",
            "slot": 1,
            **figures(2, "3.00", failed=1, rate=0.3333),
            "previous": figures(0, "0.00", failed=1, rate=1.0),
        },
        {
            "machine": "ESP32_B",
            "slot": 1,
            **figures(1, "2.00", unconfirmed=1, expired=1, rate=0.0),
            "previous": NONE,
        },
        {
            "machine": "ESP32_A",
            "slot": 2,
            **figures(1, "1.00", failed=1, rate=0.5),
            "previous": figures(1, "1.00", rate=0.0),
        },
    ]


def test_sales_per_day_count_a_late_vend_on_its_local_day(fleet, staff_client):
    body = report(staff_client, group_by="day")

    assert body["rows"] == [
        {"day": "2026-01-05", **figures(2, "3.00", failed=2, rate=0.5)},
        {"day": "2026-01-06", **figures(1, "1.00", expired=1, rate=0.0)},
        {"day": "2026-01-07", **figures(1, "2.00", unconfirmed=1, rate=0.0)},
    ]
    assert body["totals"] == TOTALS and body["previous"] == PREVIOUS


def test_sales_per_hour_are_local_hours(fleet, staff_client):
    body = report(staff_client, group_by="hour")

    assert body["rows"] == [
        {"hour": "2026-01-05T00:00:00-05:00", **figures(0, "0.00", failed=1, rate=1.0)},
        {"hour": "2026-01-05T09:00:00-05:00", **figures(2, "3.00", rate=0.0)},
        {"hour": "2026-01-05T10:00:00-05:00", **figures(0, "0.00", failed=1, rate=1.0)},
        {"hour": "2026-01-06T08:00:00-05:00", **figures(0, "0.00", expired=1)},
        {"hour": "2026-01-06T23:00:00-05:00", **figures(1, "1.00", rate=0.0)},
        {"hour": "2026-01-07T12:00:00-05:00", **figures(0, "0.00", unconfirmed=1)},
        {"hour": "2026-01-07T23:00:00-05:00", **figures(1, "2.00", rate=0.0)},
    ]
    assert body["totals"] == TOTALS and body["previous"] == PREVIOUS


def test_one_day_compares_with_the_day_before(fleet, staff_client):
    body = report(staff_client, **{"from": "2026-01-06", "to": "2026-01-06"})

    assert body["totals"] == figures(1, "1.00", expired=1, rate=0.0)
    assert body["previous"] == {
        "from": "2026-01-05",
        "to": "2026-01-05",
        "totals": figures(2, "3.00", failed=2, rate=0.5),
    }


def test_without_dates_the_report_covers_the_last_seven_days_to_today(zone, staff_client):
    today = timezone.localdate(timezone=zoneinfo.ZoneInfo(ZONE))

    body = staff_client.get(URL).json()

    assert (body["from"], body["to"]) == (str(today - timedelta(days=6)), str(today))
    assert body["group_by"] == "machine"
    assert body["rows"] == [] and body["totals"] == NONE


def parse_csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_csv_per_machine_has_a_header_row_and_one_row_per_machine(fleet, staff_client):
    response = staff_client.get(URL, {**PERIOD, "format": "csv"})

    assert parse_csv(response) == [
        [
            "machine",
            "machine_name",
            "vends",
            "revenue",
            "failed",
            "unconfirmed",
            "expired",
            "failure_rate",
            "previous_vends",
            "previous_revenue",
        ],
        ["ESP32_A", "Lobby", "3", "4.00", "2", "0", "0", "0.4", "1", "1.00"],
        ["ESP32_B", "", "1", "2.00", "0", "1", "1", "0.0", "0", "0.00"],
    ]
    assert response["Content-Disposition"] == (
        'attachment; filename="sales-machine-2026-01-05-2026-01-07.csv"'
    )


def test_csv_writes_a_machine_name_that_looks_like_a_formula_as_text(fleet, staff_client):
    Device.objects.filter(device_id="ESP32_A").update(name="+1")  # renamed by a Technician

    rows = parse_csv(staff_client.get(URL, {**PERIOD, "format": "csv"}))

    assert rows[1] == ["ESP32_A", "'+1", "3", "4.00", "2", "0", "0", "0.4", "1", "1.00"]


def test_csv_by_accept_header_per_hour_leaves_an_undefined_rate_empty(fleet, staff_client):
    response = staff_client.get(URL, {**PERIOD, "group_by": "hour"}, HTTP_ACCEPT="text/csv")

    rows = parse_csv(response)
    assert rows[0] == [
        "hour",
        "vends",
        "revenue",
        "failed",
        "unconfirmed",
        "expired",
        "failure_rate",
    ]
    assert rows[4] == ["2026-01-06T08:00:00-05:00", "0", "0.00", "0", "0", "1", ""]
    assert len(rows) == 8


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-13-01"}, "from must be a date as YYYY-MM-DD, not '2026-13-01'."),
        ({"to": "yesterday"}, "to must be a date as YYYY-MM-DD, not 'yesterday'."),
        ({"from": "2026-1-5"}, "from must be a date as YYYY-MM-DD, not '2026-1-5'."),
        (
            {"from": "2026-01-08", "to": "2026-01-07"},
            "from (2026-01-08) is after to (2026-01-07).",
        ),
        (
            {"from": "2025-01-01", "to": "2026-01-02"},
            "The period is 367 days long; a report covers at most 366 days.",
        ),
        (
            {"from": "0001-01-01", "to": "2026-01-02"},
            "from must be a date from 2000-01-01 to 9998-12-31, not '0001-01-01'.",
        ),
        (
            {"from": "2026-01-01", "to": "9999-12-31"},
            "to must be a date from 2000-01-01 to 9998-12-31, not '9999-12-31'.",
        ),
        (
            {"group_by": "colour"},
            "group_by must be one of machine, product, slot, location, route, day, hour, "
            "not 'colour'.",
        ),
        ({"format": "xml"}, "format must be json or csv, not 'xml'."),
    ],
)
def test_bad_input_is_refused_with_400_naming_the_problem(zone, staff_client, params, message):
    response = staff_client.get(URL, {**PERIOD, **params})

    assert response.status_code == 400
    assert response.json() == {"detail": message, "code": "invalid"}


def test_a_day_in_year_one_east_of_utc_is_refused_with_400_not_an_overflow(db, settings):
    settings.TIME_ZONE = (
        "Europe/Zurich"  # local midnight of 0001-01-02's previous day is year 0 in UTC
    )
    client = APIClient()
    client.force_authenticate(staff_with_role(roles.OPERATOR))

    response = client.get(URL, {"from": "0001-01-02", "to": "0001-01-02"})

    assert response.status_code == 400
    assert response.json() == {
        "detail": "to must be a date from 2000-01-01 to 9998-12-31, not '0001-01-02'.",
        "code": "invalid",
    }


def test_a_bad_request_asking_for_csv_is_answered_in_json(zone, staff_client):
    response = staff_client.get(URL, {"group_by": "nope", "format": "csv"})

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"


def client_as(role: str) -> APIClient:
    client = APIClient()
    if role == "plain":
        client.force_authenticate(UserFactory(vend_client=False))
    elif role == "vend_client":
        client.force_authenticate(UserFactory())
    elif role == "api_key":
        _key, secret = APIKey.objects.create_key(name="reports")
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    elif role == "viewer":
        client.force_authenticate(staff_with_role(roles.VIEWER))
    elif role in ("driver", "technician"):
        client.force_authenticate(staff_with_role(role.title()))
    return client


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("anonymous", 401),
        ("plain", 403),
        ("vend_client", 403),
        ("api_key", 403),
        ("driver", 403),
        ("technician", 403),
        ("viewer", 200),
    ],
)
def test_only_staff_who_read_sales_may_read_sales_reports(db, zone, role, status):
    response = client_as(role).get(URL, PERIOD)

    assert response.status_code == status
    if status == 403 and role in ("driver", "technician"):
        assert response.json() == {
            "detail": "This account lacks the permission transactions.view_sales "
            "(ask an operator for a role that has it).",
            "code": "permission_denied",
        }
    elif status == 403:
        assert response.json() == {
            "detail": "Only staff holding transactions.view_sales may do this.",
            "code": "staff_only",
        }


@pytest.mark.parametrize(
    "group_by", ["machine", "product", "slot", "location", "route", "day", "hour"]
)
def test_a_report_is_one_query_however_many_vends(
    fleet, staff_client, django_assert_num_queries, group_by
):
    with django_assert_num_queries(1):
        before = report(staff_client, group_by=group_by)
    slot = SlotFactory(device=DeviceFactory(device_id="ESP32_C"), number=3)
    Transaction.objects.bulk_create(
        Transaction(
            device=slot.device,
            slot=slot,
            slot_number=3,
            product=slot.product,
            product_name=slot.product.name,
            product_sku=slot.product.sku,
            price=Decimal("0.10"),
            state=S.SUCCEEDED,
            created_at=at("2026-01-05 12:00") + timedelta(minutes=i),
        )
        for i in range(200)
    )

    with django_assert_num_queries(1):
        after = report(staff_client, group_by=group_by)

    assert after["totals"]["vends"] == before["totals"]["vends"] + 200
    assert after["totals"]["revenue"] == "26.00"


def test_the_report_reads_only_counted_states_in_the_two_periods(fleet, django_assert_num_queries):
    with django_assert_num_queries(1) as captured:
        sales_report(period=Period(*map(lambda d: at(d).date(), PERIOD.values())), group_by="day")

    sql = captured.captured_queries[0]["sql"]
    assert "cancelled" not in sql and "queued" not in sql
