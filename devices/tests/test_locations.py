"""Locations and routes: the database refuses what would make a route or a site ambiguous."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from devices.models import Device, Location, Route, RouteStop

pytestmark = pytest.mark.django_db


def test_a_route_lists_its_locations_in_the_order_of_visits():
    north = Location.objects.create(name="North lobby")
    south = Location.objects.create(name="South canteen")
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=south, position=2)
    RouteStop.objects.create(route=route, location=north, position=1)

    assert [stop.location.name for stop in route.stops.all()] == ["North lobby", "South canteen"]


def test_two_stops_cannot_share_a_place_in_the_order_nor_a_location_appear_twice():
    north = Location.objects.create(name="North lobby")
    south = Location.objects.create(name="South canteen")
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=north, position=1)

    with pytest.raises(IntegrityError), transaction.atomic():
        RouteStop.objects.create(route=route, location=south, position=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        RouteStop.objects.create(route=route, location=north, position=2)


@pytest.mark.parametrize(
    "latitude, longitude",
    [(Decimal("52.5"), None), (None, Decimal("13.4")), (Decimal("91"), Decimal("0"))],
)
def test_coordinates_are_both_given_and_on_the_globe_or_refused(latitude, longitude):
    with pytest.raises(IntegrityError):
        Location.objects.create(name="Somewhere", latitude=latitude, longitude=longitude)


def test_deleting_a_location_keeps_its_machines_without_one():
    site = Location.objects.create(
        name="North lobby", latitude=Decimal("52.52"), longitude=Decimal("13.40")
    )
    machine = Device.objects.create(device_id="ESP32_AAAAAAAAAAAA", location=site)

    site.delete()

    machine.refresh_from_db()
    assert machine.location is None
