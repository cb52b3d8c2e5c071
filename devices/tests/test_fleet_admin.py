"""The admin's locations, routes (an ordered stop inline, a driver) and a machine's location."""

import pytest
from django.urls import reverse

from devices.models import Device, Location, Route, RouteStop
from devices.tests.test_admin import change_page_data
from tests.factories import DeviceFactory, staff_with_role
from vending_site.auth.roles import DRIVER, OPERATOR, TECHNICIAN

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(staff_with_role(OPERATOR))
    return client


@pytest.fixture
def sites(db) -> dict[str, Location]:
    return {
        name: Location.objects.create(name=name, address=f"{name} street")
        for name in ("North lobby", "South canteen", "West gate")
    }


def test_the_location_list_shows_machine_counts_and_searches(operator, sites):
    DeviceFactory(location=sites["North lobby"])
    DeviceFactory(location=sites["North lobby"])
    url = reverse("admin:devices_location_changelist")

    page = operator.get(url)
    found = operator.get(url, {"q": "canteen"})

    assert page.status_code == 200
    rows = {loc.name: loc.machine_count for loc in page.context["cl"].result_list}
    assert rows == {"North lobby": 2, "South canteen": 0, "West gate": 0}
    assert [loc.name for loc in found.context["cl"].result_list] == ["South canteen"]


def test_a_route_saves_its_stops_in_order_and_two_may_swap_places(operator, sites):
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)
    RouteStop.objects.create(route=route, location=sites["South canteen"], position=2)
    url = reverse("admin:devices_route_change", args=[route.pk])
    data = change_page_data(operator.get(url))
    data["stops-0-position"], data["stops-1-position"] = 2, 1
    data["stops-2-position"], data["stops-2-location"] = 3, sites["West gate"].pk

    response = operator.post(url, data)

    assert response.status_code == 302, response.context["errors"]
    stops = route.stops.order_by("position")
    assert [(s.position, s.location.name) for s in stops] == [
        (1, "South canteen"),
        (2, "North lobby"),
        (3, "West gate"),
    ]


def test_a_location_twice_on_a_route_is_an_error_on_the_page(operator, sites):
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)
    url = reverse("admin:devices_route_change", args=[route.pk])
    data = change_page_data(operator.get(url))
    data["stops-1-position"], data["stops-1-location"] = 2, sites["North lobby"].pk

    response = operator.post(url, data)

    assert response.status_code == 200
    assert "North lobby is on the route twice." in response.content.decode()
    assert route.stops.count() == 1


def test_only_drivers_and_operators_are_offered_as_a_routes_driver(operator):
    driver = staff_with_role(DRIVER, username="dana")
    boss = staff_with_role(OPERATOR, username="olga")
    staff_with_role(TECHNICIAN, username="tom")

    page = operator.get(reverse("admin:devices_route_add"))

    offered = set(page.context["adminform"].form.fields["driver"].queryset)
    assert {driver, boss} <= offered
    assert "tom" not in {user.username for user in offered}


def test_a_machine_is_placed_from_its_page_and_listed_and_filtered_by_location(operator, sites):
    machine = DeviceFactory(device_id="ESP32_00000000000A")
    DeviceFactory(device_id="ESP32_00000000000B")
    url = reverse("admin:devices_device_change", args=[machine.pk])
    data = change_page_data(operator.get(url))
    data["location"] = sites["West gate"].pk

    response = operator.post(url, data)

    assert response.status_code == 302
    assert Device.objects.get(pk=machine.pk).location == sites["West gate"]
    listing = operator.get(
        reverse("admin:devices_device_changelist"), {"location__id__exact": sites["West gate"].pk}
    )
    assert [d.device_id for d in listing.context["cl"].result_list] == ["ESP32_00000000000A"]
    assert "West gate" in listing.content.decode()


def test_a_driver_sees_only_their_routes_part_of_the_fleet_in_the_admin(client, sites):
    dana = staff_with_role(DRIVER)
    route = Route.objects.create(name="Monday", driver=dana)
    Route.objects.create(name="Tuesday")
    RouteStop.objects.create(route=route, location=sites["North lobby"], position=1)
    DeviceFactory(device_id="ESP32_00000000000A", location=sites["North lobby"])
    DeviceFactory(device_id="ESP32_00000000000B", location=sites["West gate"])
    client.force_login(dana)

    def listed(model: str) -> list[str]:
        page = client.get(reverse(f"admin:devices_{model}_changelist"))
        assert page.status_code == 200
        return [str(obj) for obj in page.context["cl"].result_list]

    assert listed("route") == ["Monday"]
    assert listed("location") == ["North lobby"]
    assert listed("device") == ["ESP32_00000000000A"]


def test_a_drivers_device_filter_lists_only_their_routes_locations(client, sites):
    dana = staff_with_role(DRIVER)
    route = Route.objects.create(name="Monday", driver=dana)
    for position, name in enumerate(("North lobby", "South canteen"), start=1):
        RouteStop.objects.create(route=route, location=sites[name], position=position)
        DeviceFactory(location=sites[name])
    DeviceFactory(location=sites["West gate"])
    client.force_login(dana)

    page = client.get(reverse("admin:devices_device_changelist"))

    specs = page.context["cl"].filter_specs
    [locations] = [s for s in specs if getattr(s, "field_path", None) == "location"]
    assert sorted(label for _, label in locations.lookup_choices) == [
        "North lobby",
        "South canteen",
    ]
    assert "West gate" not in page.content.decode()


@pytest.fixture
def three_stops(sites) -> Route:
    route = Route.objects.create(name="Monday")
    for position, name in enumerate(("North lobby", "South canteen", "West gate"), start=1):
        RouteStop.objects.create(route=route, location=sites[name], position=position)
    return route


def stops_of(route: Route) -> list[tuple[int, str]]:
    return [(s.position, s.location.name) for s in route.stops.order_by("position")]


def test_deleting_a_location_on_its_page_closes_the_gap_in_its_routes(operator, three_stops):
    middle = Location.objects.get(name="South canteen")
    url = reverse("admin:devices_location_delete", args=[middle.pk])

    response = operator.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert stops_of(three_stops) == [(1, "North lobby"), (2, "West gate")]


def test_deleting_locations_from_the_list_closes_the_gaps_in_their_routes(operator, three_stops):
    gone = Location.objects.filter(name__in=["North lobby", "South canteen"])

    response = operator.post(
        reverse("admin:devices_location_changelist"),
        {"action": "delete_selected", "post": "yes", "_selected_action": [loc.pk for loc in gone]},
    )

    assert response.status_code == 302
    assert stops_of(three_stops) == [(1, "West gate")]
    assert not Location.objects.filter(name="North lobby").exists()
