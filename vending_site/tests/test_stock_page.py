"""The Fleet stock page, /stock/: who may open it, what each machine shows, the order, the
filters, and a query count that does not grow with the fleet."""

import pytest
from django.utils import timezone

from devices.models import Location, Route, RouteStop
from inventory.fleet import stock_by_machine
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from vending_site.auth import roles

URL = "/stock/"


def slot(device, number, quantity, capacity=10, **fields):
    fields.setdefault("product", ProductFactory(name=f"P{device.device_id[-1]}{number}"))
    return SlotFactory(device=device, number=number, quantity=quantity, capacity=capacity, **fields)


@pytest.fixture
def fleet(db):
    """Five machines. M1 (Mall): an empty slot and a low one, 12 of 28 = 42 %; M2 (Depot): one
    low, 6 of 15 = 40 %; M3 (Depot): 19 of 20 = 95 %; M4: nothing to sell; M5 (Mall): 30 %.
    Route North visits the Mall."""
    mall = Location.objects.create(name="Mall")
    depot = Location.objects.create(name="Depot")
    driver = staff_with_role(roles.DRIVER, username="driver")
    north = Route.objects.create(name="North", driver=driver)
    RouteStop.objects.create(route=north, location=mall, position=1)
    m1 = DeviceFactory(device_id="ESP32_M1", name="Food court", location=mall)
    slot(m1, 1, 0, product=ProductFactory(name="Cola"))  # empty
    slot(m1, 2, 2, par=8, product=ProductFactory(name="Water"))  # low: at its threshold (2)
    slot(m1, 3, 10)
    slot(m1, 4, 0, enabled=False)  # disabled: not counted
    slot(m1, 5, 0, product=None)  # no product: not counted
    m2 = DeviceFactory(device_id="ESP32_M2", location=depot)
    slot(m2, 1, 5)
    slot(m2, 2, 1, capacity=5, product=ProductFactory(name="Chips"))  # low
    m3 = DeviceFactory(device_id="ESP32_M3", location=depot, last_seen=timezone.now())
    slot(m3, 1, 9)
    slot(m3, 2, 10)
    DeviceFactory(device_id="ESP32_M4")
    m5 = DeviceFactory(device_id="ESP32_M5", location=mall)
    slot(m5, 1, 3)
    return {"mall": mall, "depot": depot, "north": north, "driver": driver}


def technician(client):
    client.force_login(staff_with_role(roles.TECHNICIAN))
    return client


def shown(response) -> list[tuple]:
    return [
        (
            row.machine.device_id,
            row.stock.fill_percent,
            [s.number for s in row.stock.empty],
            [s.number for s in row.stock.low_only],
        )
        for row in response.context["rows"]
    ]


def test_machines_are_listed_neediest_first_with_their_fill(client, fleet):
    response = technician(client).get(URL)

    assert response.status_code == 200
    assert shown(response) == [
        ("ESP32_M1", 42, [1], [2]),  # 12 // 28: one empty slot
        ("ESP32_M2", 40, [], [2]),  # 6 of 15: one low
        ("ESP32_M5", 30, [], []),
        ("ESP32_M3", 95, [], []),
        ("ESP32_M4", None, [], []),  # nothing to sell: last
    ]
    assert response.context["summary"] == {
        "machines": 5,
        "empty": 1,
        "low": 1,
        "stocked": 2,  # M3 and M5; M4 has nothing to stock
        "online": 1,
    }
    html = response.content.decode()
    assert "42%" in html and "12 of 28" in html
    assert "#1 Cola" in html and "#2 Water" in html and "(2 left)" in html
    assert 'href="/machines/ESP32_M1/fill"' in html
    assert 'href="/?device=ESP32_M1"' in html
    assert "Food court" in html and "Mall" in html


def test_online_state_is_shown(client, fleet):
    html = technician(client).get(URL).content.decode()

    assert 'data-device="ESP32_M3" data-online="true"' in html
    assert 'data-device="ESP32_M1" data-online="false"' in html


def test_filter_by_location(client, fleet):
    response = technician(client).get(URL, {"location": fleet["depot"].pk})

    assert [row[0] for row in shown(response)] == ["ESP32_M2", "ESP32_M3"]
    assert response.context["location"] == fleet["depot"]


def test_filter_by_route(client, fleet):
    response = technician(client).get(URL, {"route": fleet["north"].pk})

    assert [row[0] for row in shown(response)] == ["ESP32_M1", "ESP32_M5"]


def test_an_unknown_filter_is_ignored_and_said(client, fleet):
    response = technician(client).get(URL, {"location": "999", "route": "x"})

    assert response.status_code == 200
    assert len(shown(response)) == 5
    assert "The location and route asked for is not one you may see" in response.content.decode()


def test_a_driver_sees_only_their_routes_machines_and_locations(client, fleet):
    client.force_login(fleet["driver"])

    response = client.get(URL)

    assert [row[0] for row in shown(response)] == ["ESP32_M1", "ESP32_M5"]
    assert response.context["locations"] == [fleet["mall"]]
    # Another route's location is not one of theirs: ignored, not shown.
    assert len(shown(client.get(URL, {"location": fleet["depot"].pk}))) == 2


def test_machines_with_no_selling_slot_count_nothing(db):
    device = DeviceFactory(device_id="ESP32_X")
    slot(device, 1, 0, enabled=False)

    stock = stock_by_machine([device.pk])[device.pk]

    assert (stock.fill_percent, stock.low, stock.slots) == (None, [], 0)


def test_a_machine_one_unit_short_is_not_shown_full(db):
    device = DeviceFactory(device_id="ESP32_Y")
    slot(device, 1, 199, capacity=200)

    assert stock_by_machine([device.pk])[device.pk].fill_percent == 99


@pytest.mark.parametrize(
    "role, status",
    [
        (roles.OPERATOR, 200),
        (roles.DRIVER, 200),
        (roles.TECHNICIAN, 200),
        (roles.VIEWER, 200),
    ],
)
def test_every_role_with_view_slot_may_open_it(client, db, role, status):
    client.force_login(staff_with_role(role))

    assert client.get(URL).status_code == status


def test_a_staff_account_without_view_slot_is_refused(client, db):
    from tests.factories import UserFactory

    client.force_login(UserFactory(is_staff=True, vend_client=False))

    response = client.get(URL)

    assert response.status_code == 403
    assert "inventory.view_slot" in response.content.decode()


def test_anonymous_visitors_are_sent_to_log_in(client, db):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/stock/")


def test_the_query_count_does_not_grow_with_the_fleet(client, fleet, django_assert_num_queries):
    client = technician(client)
    # session, user, permissions (2), groups (route-bound?), locations, routes, machines,
    # the sums, the low slots
    with django_assert_num_queries(10):
        client.get(URL)
    for n in range(20):
        device = DeviceFactory(device_id=f"ESP32_N{n:02d}", location=fleet["mall"])
        slot(device, 1, n % 3)
    with django_assert_num_queries(10):
        response = client.get(URL)
    assert len(response.context["rows"]) == 25
