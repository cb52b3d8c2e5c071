"""Two writers of one route's stops at once, with real threads and connections (the pattern
of tests/test_concurrency.py): each replacement is whole, none fails on the stops' unique
constraints, and the route ends with exactly one writer's order."""

import pytest

from devices import fleet
from devices.models import Location, Route, RouteStop
from tests.test_concurrency import race

ROUNDS = 5  # replacements per thread


@pytest.mark.django_db(transaction=True)
def test_concurrent_replacements_of_a_routes_stops_leave_one_whole_order():
    sites = [Location.objects.create(name=f"Site {n}") for n in range(4)]
    route = Route.objects.create(name="Monday")
    RouteStop.objects.create(route=route, location=sites[0], position=1)
    orders = [
        [s.pk for s in sites],
        [s.pk for s in reversed(sites)],
        [sites[1].pk, sites[3].pk],
        [sites[2].pk],
    ]

    def work(i: int) -> int:
        for _ in range(ROUNDS):
            fleet.save_route(route=Route.objects.get(pk=route.pk), changes={}, stops=orders[i])
        return i

    race(len(orders), work)

    stops = list(route.stops.order_by("position").values_list("position", "location_id"))
    assert [p for p, _ in stops] == list(range(1, len(stops) + 1))
    assert [loc for _, loc in stops] in orders
