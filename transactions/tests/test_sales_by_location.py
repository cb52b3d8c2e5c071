"""The sales report grouped by location and by route: sums against hand-computed figures,
a location on two routes counted in both routes but once in the totals, machines placed
nowhere, history following a moved machine, CSV parsed back, one query."""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from devices.models import Device, Location, Route, RouteStop
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from transactions.choices import TransactionState as S
from transactions.models import Transaction
from vending_site.auth import roles

URL = "/api/v1/reports/sales"
PERIOD = {"from": "2026-01-05", "to": "2026-01-07"}  # previous: 2026-01-02 .. 2026-01-04


@pytest.fixture
def staff_client(db) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff_with_role(roles.VIEWER))  # reads sales
    return client


@pytest.fixture
def sites(db, settings) -> dict[str, Location]:
    """A at the North lobby and B at the South canteen, both on Monday's route, the South
    canteen on Tuesday's too; D at the Depot (on no route); C placed nowhere."""
    settings.TIME_ZONE = "UTC"
    north, south, depot = (Location.objects.create(name=n) for n in ("North", "South", "Depot"))
    monday, tuesday = Route.objects.create(name="Monday"), Route.objects.create(name="Tuesday")
    RouteStop.objects.create(route=monday, location=north, position=1)
    RouteStop.objects.create(route=monday, location=south, position=2)
    RouteStop.objects.create(route=tuesday, location=south, position=1)
    product = ProductFactory(sku="COLA", name="Cola")
    slots = {
        name: SlotFactory(device=DeviceFactory(device_id=f"ESP32_{name}", location=site))
        for name, site in (("A", north), ("B", south), ("C", None), ("D", depot))
    }

    def vend(machine: str, state: str, price: str, day: int) -> None:
        slot = slots[machine]
        Transaction.objects.create(
            device=slot.device,
            slot=slot,
            slot_number=slot.number,
            product=product,
            product_name=product.name,
            product_sku=product.sku,
            price=Decimal(price),
            state=state,
            created_at=datetime(2026, 1, day, 12, tzinfo=UTC),
        )

    # The period:
    vend("A", S.SUCCEEDED, "2.00", 5)
    vend("A", S.SUCCEEDED, "1.50", 6)
    vend("A", S.FAILED, "1.50", 7)
    vend("B", S.SUCCEEDED, "3.00", 5)
    vend("B", S.EXPIRED, "3.00", 6)
    vend("B", S.CANCELLED, "3.00", 6)  # not a sale
    vend("C", S.SUCCEEDED, "1.00", 7)
    vend("C", S.UNCONFIRMED, "1.00", 7)
    vend("D", S.SUCCEEDED, "0.50", 5)
    # The previous period:
    vend("A", S.SUCCEEDED, "2.00", 3)
    vend("B", S.FAILED, "3.00", 2)
    # Outside both:
    vend("B", S.SUCCEEDED, "3.00", 8)
    return {"north": north, "south": south, "depot": depot, "monday": monday, "tuesday": tuesday}


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
# 5 vends (A 2, B 1, C 1, D 1), 8.00; 1 failed of 6 settled; each vend once.
TOTALS = figures(5, "8.00", failed=1, unconfirmed=1, expired=1, rate=0.1667)
PREVIOUS_TOTALS = figures(1, "2.00", failed=1, rate=0.5)


def report(client, **params) -> dict:
    response = client.get(URL, {**PERIOD, **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_sales_per_location_with_machines_placed_nowhere_as_no_location(sites, staff_client):
    body = report(staff_client, group_by="location")

    assert body["rows"] == [
        {
            "location_id": sites["north"].pk,
            "location": "North",
            **figures(2, "3.50", failed=1, rate=0.3333),
            "previous": figures(1, "2.00", rate=0.0),
        },
        {
            "location_id": sites["south"].pk,
            "location": "South",
            **figures(1, "3.00", expired=1, rate=0.0),
            "previous": figures(0, "0.00", failed=1, rate=1.0),
        },
        {
            "location_id": None,
            "location": "(no location)",
            **figures(1, "1.00", unconfirmed=1, rate=0.0),
            "previous": NONE,
        },
        {
            "location_id": sites["depot"].pk,
            "location": "Depot",
            **figures(1, "0.50", rate=0.0),
            "previous": NONE,
        },
    ]
    assert body["totals"] == TOTALS
    assert body["previous"]["totals"] == PREVIOUS_TOTALS


def test_sales_per_route_count_a_shared_location_in_both_routes_but_once_in_the_totals(
    sites, staff_client
):
    body = report(staff_client, group_by="route")

    assert body["rows"] == [
        {
            "route_id": sites["monday"].pk,
            "route": "Monday",  # North and South
            **figures(3, "6.50", failed=1, expired=1, rate=0.25),
            "previous": figures(1, "2.00", failed=1, rate=0.5),
        },
        {
            "route_id": sites["tuesday"].pk,
            "route": "Tuesday",  # South
            **figures(1, "3.00", expired=1, rate=0.0),
            "previous": figures(0, "0.00", failed=1, rate=1.0),
        },
        {
            "route_id": None,
            "route": "(no route)",  # C (nowhere) and D (the Depot, on no route)
            **figures(2, "1.50", unconfirmed=1, rate=0.0),
            "previous": NONE,
        },
    ]
    assert sum(row["vends"] for row in body["rows"]) == 6  # South's vend in both routes
    assert body["totals"] == TOTALS
    assert body["previous"]["totals"] == PREVIOUS_TOTALS


def test_a_moved_machine_takes_its_history_to_its_new_location(sites, staff_client):
    Device.objects.filter(device_id="ESP32_A").update(location=sites["depot"])

    rows = {row["location"]: row for row in report(staff_client, group_by="location")["rows"]}

    assert "North" not in rows
    assert (rows["Depot"]["vends"], rows["Depot"]["revenue"]) == (3, "4.00")


def parse_csv(response) -> list[dict]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(response.content.decode())))


@pytest.mark.parametrize("group_by", ["location", "route"])
def test_the_csv_holds_the_same_rows_as_the_json(sites, staff_client, group_by):
    rows = report(staff_client, group_by=group_by)["rows"]

    parsed = parse_csv(staff_client.get(URL, {**PERIOD, "group_by": group_by, "format": "csv"}))

    assert list(parsed[0]) == [
        f"{group_by}_id",
        group_by,
        "vends",
        "revenue",
        "failed",
        "unconfirmed",
        "expired",
        "failure_rate",
        "previous_vends",
        "previous_revenue",
    ]
    assert len(parsed) == len(rows)
    for line, row in zip(parsed, rows, strict=True):
        assert line[f"{group_by}_id"] == (
            "" if row[f"{group_by}_id"] is None else str(row[f"{group_by}_id"])
        )
        assert line[group_by] == row[group_by]
        assert (int(line["vends"]), line["revenue"]) == (row["vends"], row["revenue"])
        assert int(line["failed"]) == row["failed"]
        assert (int(line["previous_vends"]), line["previous_revenue"]) == (
            row["previous"]["vends"],
            row["previous"]["revenue"],
        )
    assert (
        sum(Decimal(line["revenue"]) for line in parsed)
        == {
            "location": Decimal("8.00"),
            "route": Decimal("11.00"),  # South's 3.00 under both of its routes
        }[group_by]
    )


@pytest.mark.parametrize("group_by", ["location", "route"])
def test_each_grouping_is_one_query(sites, staff_client, django_assert_num_queries, group_by):
    report(staff_client, group_by="machine")  # the account's permissions, read once and kept
    with django_assert_num_queries(1):
        report(staff_client, group_by=group_by)
