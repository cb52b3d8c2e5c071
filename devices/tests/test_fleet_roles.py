"""Who may read and change locations, routes and machines over REST: each role (Operator,
Driver, Technician, Viewer) against each resource, allowed and refused, and a Driver's view
narrowed to the routes they drive."""

import pytest
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from devices.models import Location, Route, RouteStop
from tests.factories import DeviceFactory, UserFactory, staff_with_role
from vending_site.auth.roles import DRIVER, OPERATOR, TECHNICIAN, VIEWER

pytestmark = pytest.mark.django_db

ROLES = (OPERATOR, DRIVER, TECHNICIAN, VIEWER)
MINE, THEIRS = "ESP32_00000000000A", "ESP32_00000000000B"


@pytest.fixture
def world(db) -> dict:
    """The Driver ``dana`` drives Monday (North lobby, machine A); Tuesday (South canteen,
    machine B) is someone else's."""
    dana = staff_with_role(DRIVER, username="dana")
    north = Location.objects.create(name="North lobby")
    south = Location.objects.create(name="South canteen")
    monday = Route.objects.create(name="Monday", driver=dana)
    tuesday = Route.objects.create(name="Tuesday", driver=staff_with_role(DRIVER))
    RouteStop.objects.create(route=monday, location=north, position=1)
    RouteStop.objects.create(route=tuesday, location=south, position=1)
    DeviceFactory(device_id=MINE, location=north)
    DeviceFactory(device_id=THEIRS, location=south)
    return {"dana": dana, "north": north, "south": south, "monday": monday, "tuesday": tuesday}


def client_as(role: str, world: dict) -> APIClient:
    client = APIClient()
    client.force_authenticate(world["dana"] if role == DRIVER else staff_with_role(role))
    return client


def requests(world: dict) -> dict:
    """One request per resource and action, on rows a Driver's route holds (so a refusal is
    the role's, not the scope's)."""
    north, monday = world["north"].pk, world["monday"].pk
    return {
        "locations list": ("get", "/api/v1/locations", None),
        "location read": ("get", f"/api/v1/locations/{north}", None),
        "location create": ("post", "/api/v1/locations", {"name": "East hall"}),
        "location update": ("patch", f"/api/v1/locations/{north}", {"notes": "Gate B"}),
        "location delete": ("delete", f"/api/v1/locations/{north}", None),
        "routes list": ("get", "/api/v1/routes", None),
        "route read": ("get", f"/api/v1/routes/{monday}", None),
        "route create": ("post", "/api/v1/routes", {"name": "Friday"}),
        "route update": ("patch", f"/api/v1/routes/{monday}", {"stops": []}),
        "route delete": ("delete", f"/api/v1/routes/{monday}", None),
        "machines list": ("get", "/api/v1/machines", None),
        "machine read": ("get", f"/api/v1/machines/{MINE}", None),
        "machine update": ("patch", f"/api/v1/machines/{MINE}", {"name": "Lobby"}),
    }


# Expected status per role, in ROLES order (Operator, Driver, Technician, Viewer).
EXPECTED = {
    "locations list": (200, 200, 200, 200),
    "location read": (200, 200, 200, 200),
    "location create": (201, 403, 403, 403),
    "location update": (200, 403, 403, 403),
    "location delete": (204, 403, 403, 403),
    "routes list": (200, 200, 200, 200),
    "route read": (200, 200, 200, 200),
    "route create": (201, 403, 403, 403),
    "route update": (200, 403, 403, 403),
    "route delete": (204, 403, 403, 403),
    "machines list": (200, 200, 200, 200),
    "machine read": (200, 200, 200, 200),
    # A Technician works on machines (devices.change_device): names and places them.
    "machine update": (200, 403, 200, 403),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(EXPECTED))
def test_each_role_is_allowed_or_refused_each_action(world, role, action):
    method, url, body = requests(world)[action]
    client = client_as(role, world)

    response = getattr(client, method)(url, body, format="json")

    assert response.status_code == EXPECTED[action][ROLES.index(role)], response.content
    if response.status_code == 403:
        verb = {"get": "view", "post": "add", "patch": "change", "delete": "delete"}[method]
        model = {"location": "location", "route": "route", "machine": "device"}[
            action.split()[0].rstrip("s")
        ]
        assert f"devices.{verb}_{model}" in response.json()["detail"]


@pytest.mark.parametrize(
    "client",
    ["anonymous", "no role", "not staff"],
)
def test_someone_without_a_role_reads_nothing(world, client):
    api = APIClient()
    if client == "no role":
        api.force_authenticate(UserFactory(is_staff=True, vend_client=False))
    elif client == "not staff":
        api.force_authenticate(UserFactory())  # a vend client
    for url in ("/api/v1/locations", "/api/v1/routes", "/api/v1/machines"):
        assert api.get(url).status_code == (401 if client == "anonymous" else 403)


def results(response) -> list:
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_a_driver_lists_only_their_routes_locations_and_machines(world):
    dana = client_as(DRIVER, world)

    assert [r["name"] for r in results(dana.get("/api/v1/routes"))] == ["Monday"]
    assert [loc["name"] for loc in results(dana.get("/api/v1/locations"))] == ["North lobby"]
    assert [m["device_id"] for m in results(dana.get("/api/v1/machines"))] == [MINE]
    tuesday = world["tuesday"].pk
    assert results(dana.get("/api/v1/machines", {"route": tuesday})) == []


def test_a_driver_gets_404_for_another_drivers_route_location_and_machine(world):
    dana = client_as(DRIVER, world)

    for url in (
        f"/api/v1/routes/{world['tuesday'].pk}",
        f"/api/v1/locations/{world['south'].pk}",
        f"/api/v1/machines/{THEIRS}",
    ):
        response = dana.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("role", [OPERATOR, TECHNICIAN, VIEWER])
def test_every_other_role_sees_the_whole_fleet(world, role):
    client = client_as(role, world)

    assert len(results(client.get("/api/v1/routes"))) == 2
    assert len(results(client.get("/api/v1/locations"))) == 2
    assert len(results(client.get("/api/v1/machines"))) == 2
    assert client.get(f"/api/v1/machines/{THEIRS}").status_code == 200


def test_an_api_key_is_refused_even_for_reads(world):
    _key, secret = APIKey.objects.create_key(name="kiosk")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")

    assert client.get("/api/v1/machines").status_code == 403
