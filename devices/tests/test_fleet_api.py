"""Locations, routes and machines over REST: what each resource shows, what a write may
change, and how bad input is refused (as an Operator; who may do what is
test_fleet_roles.py)."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from devices.models import Device, Location, Route, RouteStop
from tests.factories import DeviceFactory, UserFactory, staff_with_role
from vending_site.auth.roles import DRIVER, OPERATOR, TECHNICIAN, VIEWER

pytestmark = pytest.mark.django_db

LOCATIONS, ROUTES, MACHINES = "/api/v1/locations", "/api/v1/routes", "/api/v1/machines"


@pytest.fixture
def operator(client_for) -> APIClient:
    return client_for(staff_with_role(OPERATOR))


@pytest.fixture
def sites(db) -> dict[str, Location]:
    return {
        name: Location.objects.create(name=name)
        for name in ("North lobby", "South canteen", "West gate")
    }


def stops_of(route: Route) -> list[str]:
    return [stop.location.name for stop in route.stops.order_by("position")]


# --- Locations ----------------------------------------------------------------------------


def test_a_location_is_created_read_and_listed_with_its_machines(operator):
    response = operator.post(
        LOCATIONS,
        {
            "name": "North lobby",
            "address": "1 Main Street",
            "latitude": 52.52,
            "longitude": "13.405",
            "contact": "Reception",
            "notes": "Badge at the desk",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    site = Location.objects.get(pk=created["id"])
    assert (site.latitude, site.longitude) == (Decimal("52.52"), Decimal("13.405"))
    DeviceFactory(device_id="ESP32_00000000000B", location=site)
    DeviceFactory(device_id="ESP32_00000000000A", location=site)

    body = operator.get(f"{LOCATIONS}/{site.pk}").json()

    assert body == {
        "id": site.pk,
        "name": "North lobby",
        "address": "1 Main Street",
        "latitude": 52.52,
        "longitude": 13.405,
        "contact": "Reception",
        "notes": "Badge at the desk",
        "machines": ["ESP32_00000000000A", "ESP32_00000000000B"],
        "created_at": created["created_at"],
    }
    listed = operator.get(LOCATIONS).json()
    assert listed["count"] == 1
    assert listed["results"] == [body]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"latitude": 52.5}, "longitude"),
        ({"longitude": 13.4}, "latitude"),
        ({"latitude": 91, "longitude": 0}, "latitude"),
        ({"latitude": 0, "longitude": -180.5}, "longitude"),
        ({"latitude": "north", "longitude": 0}, "latitude"),
    ],
)
def test_coordinates_alone_or_off_the_globe_are_refused_naming_the_field(operator, body, field):
    response = operator.post(LOCATIONS, {"name": "Somewhere", **body}, format="json")

    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert not Location.objects.exists()


def test_a_patch_keeps_coordinates_paired_with_what_is_stored(operator):
    site = Location.objects.create(
        name="North lobby", latitude=Decimal("52.5"), longitude=Decimal("13.4")
    )
    url = f"{LOCATIONS}/{site.pk}"

    moved = operator.patch(url, {"latitude": 48.1}, format="json")
    half_cleared = operator.patch(url, {"longitude": None}, format="json")
    cleared = operator.patch(url, {"latitude": None, "longitude": None}, format="json")

    assert moved.status_code == 200
    assert moved.json()["latitude"] == 48.1
    assert half_cleared.status_code == 400
    assert list(half_cleared.json()["errors"]) == ["longitude"]
    assert cleared.status_code == 200
    site.refresh_from_db()
    assert (site.latitude, site.longitude) == (None, None)


def test_a_second_location_with_the_same_name_is_refused(operator, sites):
    response = operator.post(LOCATIONS, {"name": "North lobby"}, format="json")

    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def test_machines_of_a_location_are_read_only_there(operator, sites):
    site = sites["North lobby"]
    DeviceFactory(device_id="ESP32_00000000000A")

    response = operator.patch(
        f"{LOCATIONS}/{site.pk}", {"machines": ["ESP32_00000000000A"]}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["machines"] == []


def test_deleting_a_location_keeps_its_machines_and_closes_the_gap_in_routes(operator, sites):
    route = Route.objects.create(name="Monday")
    for position, name in enumerate(("North lobby", "South canteen", "West gate"), start=1):
        RouteStop.objects.create(route=route, location=sites[name], position=position)
    machine = DeviceFactory(location=sites["South canteen"])

    response = operator.delete(f"{LOCATIONS}/{sites['South canteen'].pk}")

    assert response.status_code == 204
    machine.refresh_from_db()
    assert machine.location is None
    assert list(route.stops.order_by("position").values_list("position", flat=True)) == [1, 2]
    assert stops_of(route) == ["North lobby", "West gate"]


@pytest.mark.parametrize("pk", ["999999", "abc", "99999999999999"])
def test_an_unknown_location_is_404(operator, pk):
    assert operator.get(f"{LOCATIONS}/{pk}").status_code == 404
    assert operator.patch(f"{LOCATIONS}/{pk}", {}, format="json").status_code == 404
    assert operator.delete(f"{LOCATIONS}/{pk}").status_code == 404


# --- Routes -------------------------------------------------------------------------------


def test_a_route_is_created_with_a_driver_and_its_stops_in_order(operator, sites):
    driver = staff_with_role(DRIVER, username="dana")
    ids = [sites[n].pk for n in ("West gate", "North lobby")]

    response = operator.post(
        ROUTES, {"name": "Monday", "driver": driver.pk, "stops": ids}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("name", "driver", "driver_name", "notes", "stops")} == {
        "name": "Monday",
        "driver": driver.pk,
        "driver_name": "dana",
        "notes": "",
        "stops": ids,
    }
    route = Route.objects.get(pk=body["id"])
    assert stops_of(route) == ["West gate", "North lobby"]
    assert operator.get(f"{ROUTES}/{route.pk}").json() == body
    assert operator.get(ROUTES).json()["results"] == [body]


def test_writing_stops_replaces_the_whole_order(operator, sites):
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)
    RouteStop.objects.create(route=route, location=sites["South canteen"], position=2)
    new = [sites["South canteen"].pk, sites["West gate"].pk, sites["North lobby"].pk]

    response = operator.patch(f"{ROUTES}/{route.pk}", {"stops": new}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["stops"] == new
    assert stops_of(route) == ["South canteen", "West gate", "North lobby"]
    assert (
        operator.patch(f"{ROUTES}/{route.pk}", {"stops": []}, format="json").json()["stops"] == []
    )


def test_a_location_twice_in_the_stops_is_refused_naming_it_and_nothing_changes(operator, sites):
    route = Route.objects.create(name="Monday", notes="old")
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)
    west = sites["West gate"].pk

    response = operator.patch(
        f"{ROUTES}/{route.pk}", {"notes": "new", "stops": [west, west]}, format="json"
    )

    assert response.status_code == 400
    assert f"Location {west} appears more than once" in response.json()["detail"]
    assert "stops" in response.json()["errors"]
    route.refresh_from_db()
    assert route.notes == "old"
    assert stops_of(route) == ["North lobby"]


def test_an_unknown_location_in_the_stops_is_refused_naming_it(operator, sites):
    response = operator.post(
        ROUTES, {"name": "Monday", "stops": [sites["West gate"].pk, 999999]}, format="json"
    )

    assert response.status_code == 400
    assert "No location 999999 exists" in response.json()["detail"]
    assert not Route.objects.exists()


@pytest.mark.parametrize("role", [DRIVER, OPERATOR])
def test_a_driver_or_an_operator_may_drive_a_route(operator, role):
    user = staff_with_role(role)

    response = operator.post(ROUTES, {"name": "Monday", "driver": user.pk}, format="json")

    assert response.status_code == 201
    assert Route.objects.get().driver == user


@pytest.mark.parametrize("who", ["technician", "viewer", "not staff", "no role", "nobody"])
def test_anyone_else_as_driver_is_422_naming_them(operator, who):
    user = {
        "technician": lambda: staff_with_role(TECHNICIAN),
        "viewer": lambda: staff_with_role(VIEWER),
        "not staff": lambda: UserFactory(is_staff=False),
        "no role": lambda: UserFactory(is_staff=True, vend_client=False),
        "nobody": lambda: None,
    }[who]()
    user_id = user.pk if user else 999999

    response = operator.post(ROUTES, {"name": "Monday", "driver": user_id}, format="json")

    assert response.status_code == 422, response.content
    assert response.json()["code"] == "not_a_driver"
    assert str(user_id) in response.json()["detail"]
    assert not Route.objects.exists()


def test_a_route_loses_its_driver_with_null_and_deleting_it_keeps_its_locations(operator, sites):
    route = Route.objects.create(name="Monday", driver=staff_with_role(DRIVER))
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)

    cleared = operator.patch(f"{ROUTES}/{route.pk}", {"driver": None}, format="json")
    deleted = operator.delete(f"{ROUTES}/{route.pk}")

    assert cleared.status_code == 200
    assert (cleared.json()["driver"], cleared.json()["driver_name"]) == (None, None)
    assert deleted.status_code == 204
    assert not Route.objects.exists()
    assert Location.objects.count() == 3


# --- Machines -----------------------------------------------------------------------------


@pytest.fixture
def placed(sites) -> dict[str, Device]:
    """A at the North lobby (on Monday's route), B at the West gate, C nowhere."""
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)
    return {
        "A": DeviceFactory(device_id="ESP32_00000000000A", name="A", location=sites["North lobby"]),
        "B": DeviceFactory(device_id="ESP32_00000000000B", location=sites["West gate"]),
        "C": DeviceFactory(device_id="ESP32_00000000000C"),
    }


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [m["device_id"] for m in response.json()["results"]]


def test_machines_are_listed_with_their_location_and_filtered_by_location_or_route(
    operator, sites, placed
):
    everything = operator.get(MACHINES)
    north = sites["North lobby"].pk

    assert ids(everything) == ["ESP32_00000000000A", "ESP32_00000000000B", "ESP32_00000000000C"]
    first = everything.json()["results"][0]
    assert first == {
        "device_id": "ESP32_00000000000A",
        "name": "A",
        "location": {"id": north, "name": "North lobby"},
        "online": False,
        "admission": first["admission"],
        "last_seen": None,
        "slot_count": 5,
    }
    assert ids(operator.get(MACHINES, {"location": north})) == ["ESP32_00000000000A"]
    assert ids(operator.get(MACHINES, {"location": "none"})) == ["ESP32_00000000000C"]
    route = Route.objects.get()
    assert ids(operator.get(MACHINES, {"route": route.pk})) == ["ESP32_00000000000A"]
    assert operator.get(MACHINES, {"route": "monday"}).status_code == 400


def test_a_machine_is_read_by_any_spelling_of_its_id(operator, placed):
    response = operator.get(f"{MACHINES}/esp32_00000000000a")

    assert response.status_code == 200
    assert response.json()["device_id"] == "ESP32_00000000000A"
    assert operator.get(f"{MACHINES}/ESP32_0000000000FF").status_code == 404


def test_a_machine_is_renamed_and_moved_and_nothing_else(operator, sites, placed):
    url = f"{MACHINES}/ESP32_00000000000C"
    west = sites["West gate"].pk

    moved = operator.patch(url, {"name": "Canteen", "location": west}, format="json")
    refused = operator.patch(url, {"name": "X", "slot_count": 9, "approved": False}, format="json")
    unknown = operator.patch(url, {"location": 999999}, format="json")
    unplaced = operator.patch(url, {"location": None}, format="json")

    assert moved.status_code == 200
    assert moved.json()["location"] == {"id": west, "name": "West gate"}
    assert refused.status_code == 400
    assert set(refused.json()["errors"]) == {"slot_count", "approved"}
    assert unknown.status_code == 400
    assert "No location 999999 exists" in unknown.json()["detail"]
    assert unplaced.json()["location"] is None
    machine = Device.objects.get(device_id="ESP32_00000000000C")
    assert (machine.name, machine.slot_count, machine.approved) == ("Canteen", 5, True)


def test_the_slots_and_restock_of_a_machine_still_answer_beside_it(operator, online_device):
    url = f"{MACHINES}/{online_device.device_id}"

    assert operator.get(f"{url}/slots").status_code == 200
    restock = operator.post(f"{url}/restock", {"loaded": {"1": 1}}, format="json")
    assert restock.status_code == 200, restock.content


def test_lists_cost_a_fixed_number_of_queries(
    operator, sites, placed, django_assert_max_num_queries
):
    for n in range(5):
        site = Location.objects.create(name=f"Extra {n}")
        DeviceFactory(location=site)
        route = Route.objects.create(name=f"Route {n}", driver=staff_with_role(DRIVER))
        RouteStop.objects.create(route=route, location=site, position=1)

    # Authentication and permissions, the count, the page, one prefetch.
    for url in (LOCATIONS, ROUTES, MACHINES):
        with django_assert_max_num_queries(6):
            assert operator.get(url).status_code == 200


def test_a_bad_stop_is_refused_with_a_flat_message_naming_its_place(operator):
    response = operator.post(ROUTES, {"name": "Monday", "stops": [1, "x", 2**31]}, format="json")

    assert response.status_code == 400
    errors = response.json()["errors"]["stops"]
    assert errors == [
        "Item 1: A valid integer is required.",
        "Item 2: Ensure this value is less than or equal to 2147483647.",
    ]
