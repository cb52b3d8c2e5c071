"""Schemathesis over the server's own OpenAPI schema (``/api/schema/``): every documented
operation gets generated requests, valid and invalid, and every answer must be no 5xx, a
documented status, a documented content type and a body that matches the schema.

The requests go straight into the WSGI application (no socket), against a real test
database (``transactional_db``: commits and ``on_commit`` run as in production) holding one
online, stocked, active machine, so the authorised paths run, not just 401/403:

- the vending operations (tag ``vends``: vend, list, read and cancel transactions) with a
  real vend-client API key made by ``manage.py create_api_key``, the way a kiosk calls them;
  every other case of those is steered onto the real machine, its real slots and the key's
  own transactions (made through the API first), so the cases reach the views' validation
  and the vend service instead of 404s;
- everything else as staff with a JWT.

After each operation's run the stock adds up (``tests/accounting.py``): every slot's
quantity is explained by the vends and by the ledger, whatever the fuzzer sent.

Deterministic for CI: a fixed schemathesis seed, Hypothesis derandomized, no example
database. ``MAX_EXAMPLES`` per operation sets the size (about 25 x 20 operations).
"""

import io
from collections import Counter

import pytest
import schemathesis
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, settings
from rest_framework_simplejwt.tokens import RefreshToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devices.models import Device, Location, Route, RouteStop
from inventory.models import Product
from tests.accounting import assert_stock_adds_up, take_start
from tests.factories import UserFactory, stocked_device
from vending_site.notify.events import emit
from vending_site.notify.models import Endpoint
from vending_site.wsgi import application

SEED = 20261124
MAX_EXAMPLES = 25
# Below this, the run no longer says much: a filter or config change has quietly cut it.
MIN_TOTAL_CASES = 300
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Loaded at collection, from the app itself (no database is touched to build the schema).
# `schemathesis.pytest.from_fixture` would load it lazily, but 4.32 fails under pytest 9
# ("'Function' object has no attribute '_nodeid'").
# The coverage phase (every boundary of every field, ~700 more cases) is left out to keep
# the run short; examples and generated data (valid and invalid) remain.
schema = schemathesis.openapi.from_wsgi(
    "/api/schema/?format=json",
    application,
    config=schemathesis.config.SchemathesisConfig.from_dict(
        {"seed": SEED, "phases": {"coverage": {"enabled": False}}}
    ),
)
OPERATIONS = sum(1 for result in schema.get_all_operations())


def answered(counter: Counter) -> int:
    return sum(n for status, n in counter.items() if status != "steered")


@pytest.fixture(scope="module")
def statuses():
    """Answers seen per operation; at the end, the total must be a real fuzzing run."""
    seen: dict[str, Counter] = {}
    yield seen
    total = sum(answered(counter) for counter in seen.values())
    print(f"\nfuzz: {total} cases over {len(seen)} operations")
    for label, counter in sorted(seen.items()):
        print(f"  {label}: {dict(sorted(counter.items(), key=str))}")
    if len(seen) == OPERATIONS:  # a -k selection runs fewer; then there is nothing to count
        assert total >= MIN_TOTAL_CASES, f"only {total} fuzz cases ran"


DEVICE = "ESP32_6CC8404FE03C"
SLOTS = 5
STOCK = 200  # per slot: the fuzzer's vends must not empty them all
VENDS_TAG = "vends"  # the operations a vend-client API key is for
PLANOGRAM_TAG = "planogram"  # staff's, steered onto the real machine and slots too
PRODUCTS_TAG = "products"  # staff's, steered onto the machine's real products
PICKLIST_TAG = "pick lists"  # staff's, steered onto the real machine too
FLEET_TAG = "fleet"  # staff's, steered onto the real machine, location and route
WEBHOOKS_TAG = "webhooks"  # staff's, steered onto a real subscription and its delivery


@pytest.fixture
def fleet(transactional_db, settings):
    """One online, stocked, active machine; limits that would only answer 429 raised; the
    vend `wait` capped at 1 s so a held answer cannot stall the run. Afterwards, the stock
    must add up."""
    settings.API_THROTTLE_USER = "100000/min"
    settings.API_THROTTLE_VEND = "100000/min"
    settings.DEVICE_THROTTLE = "100000/min"
    settings.VEND_MAX_WAIT = 1
    # Binding off: schemathesis' WSGI requests carry no address, and the device cases must
    # reach the device logic (binding has its own tests, devices/tests/test_access.py).
    settings.DEVICE_ADDRESS_BINDING = False
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # the steered subscription's receiver
    stocked_device(
        DEVICE,
        is_active=True,
        last_seen=timezone.now(),
        quantity=STOCK,
        capacity=STOCK,
        bound_address=None,
        last_address=None,
    )
    start = take_start()
    yield
    assert_stock_adds_up(start, devices=[DEVICE])


@pytest.fixture
def fleet_rows(fleet) -> dict:
    """A location holding the machine and a route through it, for the steered cases."""
    site = Location.objects.create(name="Fuzz site")
    Device.objects.filter(device_id=DEVICE).update(location=site)
    route = Route.objects.create(name="Fuzz route")
    RouteStop.objects.create(route=route, location=site, position=1)
    return {"locations": site.pk, "routes": route.pk}


@pytest.fixture
def webhook_rows(transactional_db) -> dict:
    """A webhook subscription with one delivery, for the steered cases."""
    endpoint = Endpoint.objects.create(
        name="fuzz", url="http://127.0.0.1:9/hooks", event_types=["vend.failed"]
    )
    emit("vend.failed", {"id": "fuzz"}, subject="vend:fuzz")
    return {"id": endpoint.pk, "delivery_id": endpoint.deliveries.get().pk}


@pytest.fixture
def staff_headers(transactional_db) -> dict:
    staff = UserFactory(username="fuzz-staff", is_staff=True, is_superuser=True)
    return {"Authorization": f"Bearer {RefreshToken.for_user(staff).access_token}"}


@pytest.fixture
def key_headers(transactional_db) -> dict:
    """A real vend-client key, as an operator makes one."""
    out = io.StringIO()
    call_command("create_api_key", "--name", "fuzz kiosk", stdout=out, stderr=io.StringIO())
    return {"Authorization": f"Api-Key {out.getvalue().strip()}"}


@pytest.fixture
def own_vends(fleet, key_headers) -> list[str]:
    """Three queued vends of the key's, made through the API, for the steered cases."""
    client = Client(headers=key_headers)
    ids = []
    for slot in (1, 2, 3):
        response = client.post(f"/api/v1/vend/{slot}/", {}, content_type="application/json")
        assert response.status_code == 202, response.content
        ids.append(response.json()["id"])
    return ids


def steer(case, own_vends: list[str], turn: int) -> bool:
    """Every other case of a vending operation: the real slots, machine and transactions in
    place of generated values (the rest of the case stays as generated). True if steered."""
    if turn % 2:
        return False
    n = turn // 2
    parameters = case.path_parameters or {}
    if "slot_id" in parameters:
        parameters["slot_id"] = 1 + n % SLOTS
    if "id" in parameters:
        parameters["id"] = own_vends[n % len(own_vends)]
    if isinstance(case.body, dict):
        if "device_id" in case.body:
            case.body["device_id"] = DEVICE if n % 3 else None  # None: the active machine
        wait = case.body.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 1:
            case.body["wait"] = 0.05  # held answers would be most of the run's time
    return True


def steer_planogram(case, turn: int) -> bool:
    """Every other case of a planogram operation: the real machine and slot numbers (the
    units loaded stay as generated). True if steered."""
    if turn % 2:
        return False
    n = turn // 2
    parameters = case.path_parameters or {}
    parameters["device_id"] = DEVICE
    if "number" in parameters:
        parameters["number"] = 1 + n % SLOTS
    if isinstance(case.body, dict) and isinstance(case.body.get("loaded"), dict):
        units = list(case.body["loaded"].values())[:SLOTS]
        case.body["loaded"] = {str(1 + (n + i) % SLOTS): u for i, u in enumerate(units)}
    return True


def steer_product(case, turn: int) -> bool:
    """Every other case of a product operation naming one: a real product (one the machine's
    slots hold, so a DELETE meets the 409 it must). True if steered."""
    parameters = case.path_parameters or {}
    if turn % 2 or "id" not in parameters:
        return False
    ids = list(Product.objects.order_by("pk").values_list("pk", flat=True))
    parameters["id"] = ids[(turn // 2) % len(ids)]
    return True


def steer_picklist(case, turn: int) -> bool:
    """Every other case of the pick list: the real machine as its one selection (visit and
    format stay as generated), so the list itself is built and checked. True if steered."""
    if turn % 2:
        return False
    query = case.query if isinstance(case.query, dict) else {}
    visit, wanted = query.get("visit"), query.get("format")
    case.query = {"machine": [DEVICE]}
    if visit is not None:
        case.query["visit"] = visit
    if wanted is not None:
        case.query["format"] = wanted
    return True


def steer_fleet(case, rows: dict, turn: int) -> bool:
    """Every other case of a fleet operation: the real machine, location or route in the
    path (bodies stay as generated). True if steered."""
    parameters = case.path_parameters or {}
    if turn % 2 or not parameters:
        return False
    if "device_id" in parameters:
        parameters["device_id"] = DEVICE
    if "id" in parameters:
        parameters["id"] = rows["routes" if "/routes/" in case.operation.path else "locations"]
    return True


def steer_webhook(case, rows: dict, turn: int) -> bool:
    """Every other case of a webhook operation naming one: the real subscription and its
    delivery in the path (bodies stay as generated). True if steered."""
    parameters = case.path_parameters or {}
    if turn % 2 or not parameters:
        return False
    for name in ("id", "delivery_id"):
        if name in parameters:
            parameters[name] = rows[name]
    return True


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented_and_never_with_5xx(
    case, fleet, fleet_rows, webhook_rows, staff_headers, key_headers, own_vends, statuses
):
    counter = statuses.setdefault(case.operation.label, Counter())
    if VENDS_TAG in (case.operation.tags or []):
        headers = key_headers
        if steer(case, own_vends, answered(counter)):
            counter["steered"] += 1
    else:
        headers = staff_headers
        if PLANOGRAM_TAG in (case.operation.tags or []) and steer_planogram(
            case, answered(counter)
        ):
            counter["steered"] += 1
        if PRODUCTS_TAG in (case.operation.tags or []) and steer_product(case, answered(counter)):
            counter["steered"] += 1
        if PICKLIST_TAG in (case.operation.tags or []) and steer_picklist(case, answered(counter)):
            counter["steered"] += 1
        if FLEET_TAG in (case.operation.tags or []) and steer_fleet(
            case, fleet_rows, answered(counter)
        ):
            counter["steered"] += 1
        if WEBHOOKS_TAG in (case.operation.tags or []) and steer_webhook(
            case, webhook_rows, answered(counter)
        ):
            counter["steered"] += 1
    response = case.call(headers=headers)
    counter[response.status_code] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)
