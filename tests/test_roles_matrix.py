"""Each staff role against each existing resource: the REST API, the dashboard's JSON and
page, and the admin, allowed and refused, with the refusal's status and message
(docs/security.md, "Staff roles"). The Driver drives a route through the location of the
machine under test (``online_device``); ``OTHER`` stands nowhere on it."""

import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from devices.models import Device, Location, Route, RouteStop, SerialPort
from devices.tests.helpers import DEVICE_ID
from inventory.models import Product, Slot, StockMovement
from tests.factories import DeviceFactory, SlotFactory, UserFactory, staff_with_role
from transactions.models import Transaction
from vending_site.auth import roles
from vending_site.auth.permissions import lacks
from vending_site.live.audience import audience_for, for_page

OTHER = "ESP32_0000000000AA"
OP, DR, TE, VI = roles.OPERATOR, roles.DRIVER, roles.TECHNICIAN, roles.VIEWER
ROLES = (OP, DR, TE, VI)


@pytest.fixture
def fleet(online_device):
    """The Driver's route reaches ``online_device``; ``OTHER`` stands elsewhere."""
    here = Location.objects.create(name="Depot")
    Device.objects.filter(pk=online_device.pk).update(location=here)
    other = DeviceFactory(device_id=OTHER, location=Location.objects.create(name="Far away"))
    SlotFactory(device=other, number=1, quantity=1, capacity=10)
    driver = staff_with_role(DR)
    route = Route.objects.create(name="Morning", driver=driver)
    RouteStop.objects.create(route=route, location=here, position=1)
    users = {OP: staff_with_role(OP), DR: driver, TE: staff_with_role(TE), VI: staff_with_role(VI)}
    return users


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def page(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def refused(response, perm: str) -> None:
    assert response.status_code == 403, response.content
    assert response.json() == {"detail": lacks(perm), "code": "permission_denied"}


# --- REST ------------------------------------------------------------------------------------

V = {"device_id": DEVICE_ID}
SLOTS, OTHER_SLOTS = f"/api/v1/machines/{DEVICE_ID}/slots", f"/api/v1/machines/{OTHER}/slots"

# method, path, body, then per role (Operator, Driver, Technician, Viewer): the status, and
# for a 403 the permission its message names.
REST = [
    ("get", "/api/v1/devices/", None, (200, 200, 200, 200), None),
    ("get", "/esp32/devices/list", None, (200, 200, 200, 200), None),
    ("get", "/api/v1/transactions/", None, (200, 200, 200, 200), None),
    ("post", "/api/v1/vend/1", V, (202, 403, 202, 403), "devices.operate_device"),
    ("post", "/vend/2", V, (202, 403, 202, 403), "devices.operate_device"),
    ("post", "/esp32/devices/select", V, (200, 403, 200, 403), "devices.operate_device"),
    ("post", "/esp32/devices/auto-select", {}, (200, 403, 200, 403), "devices.operate_device"),
    # firmware v2.1 acts on no STATUS: past the permission, the service answers 409
    (
        "post",
        f"/api/v1/devices/{DEVICE_ID}/commands",
        {"command": "STATUS"},
        (409, 403, 409, 403),
        "devices.operate_device",
    ),
    (
        "post",
        f"/api/v1/devices/{DEVICE_ID}/admission",
        {"action": "approve"},
        (200, 403, 200, 403),
        "devices.change_device",
    ),
    ("get", "/api/v1/reports/sales", None, (200, 403, 403, 200), "transactions.view_sales"),
    ("get", SLOTS, None, (200, 200, 200, 200), None),
    ("get", OTHER_SLOTS, None, (200, 404, 200, 200), None),
    (
        "patch",
        f"{SLOTS}/1",
        {"low_stock_threshold": 3},
        (200, 403, 200, 403),
        "inventory.change_slot",
    ),
    (
        "post",
        f"/api/v1/machines/{DEVICE_ID}/restock",
        {"loaded": {"1": 2}},
        (200, 200, 403, 403),
        "inventory.restock_slot",
    ),
    (
        "post",
        f"/api/v1/machines/{OTHER}/restock",
        {"loaded": {"1": 2}},
        (200, 404, 403, 403),
        "inventory.restock_slot",
    ),
    ("get", "/status", None, (200, 200, 200, 200), None),
]


@pytest.mark.parametrize("role_index", range(4), ids=ROLES)
@pytest.mark.parametrize(
    ("method", "path", "body", "expected", "perm"), REST, ids=[r[1] for r in REST]
)
def test_rest_per_role(fleet, method, path, body, expected, perm, role_index):
    client = api(fleet[ROLES[role_index]])
    response = (
        getattr(client, method)(path, body, format="json")
        if body is not None
        else getattr(client, method)(path)
    )

    assert response.status_code == expected[role_index], response.content
    if response.status_code == 403:
        refused(response, perm)
    if response.status_code == 404:
        assert response.json() == {
            "detail": f"No device {OTHER} is registered.",
            "code": "unknown_device",
            "device_id": OTHER,
        }


@pytest.mark.parametrize(
    ("role", "status"), [(OP, 200), (DR, 403), (TE, 403), (VI, 403)], ids=ROLES
)
def test_a_price_in_a_slot_edit_needs_change_price_and_the_refusal_names_it(fleet, role, status):
    response = api(fleet[role]).patch(f"{SLOTS}/1", {"price": "1.50"}, format="json")

    assert response.status_code == status, response.content
    if role == OP:
        assert response.json()["price_override"] == "1.50"
    else:
        # A Technician may edit the slot but not its price; a Driver and a Viewer may do
        # neither, and are told of the slot first.
        refused(response, "inventory.change_price" if role == TE else "inventory.change_slot")
        assert Slot.objects.get(device__device_id=DEVICE_ID, number=1).price is None


@pytest.mark.parametrize(("role", "prices"), [(OP, True), (DR, False), (TE, False), (VI, True)])
def test_prices_show_only_to_roles_that_see_money(fleet, role, prices):
    slots = api(fleet[role]).get(SLOTS).json()["slots"]
    status = api(fleet[role]).get("/status").json()["devices"][0]["inventory"]

    assert (slots[0]["price"] is not None) is prices
    assert (slots[0]["product"]["price"] is not None) is prices
    assert (status[0]["product"]["price"] is not None) is prices


def test_a_driver_lists_only_the_machines_of_their_routes(fleet):
    client = api(fleet[DR])

    assert [d["device_id"] for d in client.get("/api/v1/devices/").json()["devices"]] == [DEVICE_ID]
    assert [d["device_id"] for d in client.get("/status").json()["devices"]] == [DEVICE_ID]
    everyone = api(fleet[VI]).get("/api/v1/devices/").json()["devices"]
    assert sorted(d["device_id"] for d in everyone) == sorted([DEVICE_ID, OTHER])


@pytest.mark.parametrize(
    ("role", "sees_all", "cancels_others"),
    [(OP, True, True), (DR, False, False), (TE, False, False), (VI, True, False)],
    ids=ROLES,
)
def test_only_roles_holding_the_transaction_permissions_see_and_cancel_every_vend(
    fleet, role, sees_all, cancels_others
):
    """A Driver or a Technician sees only their own vends (a Technician's test vends); a
    Viewer sees every vend but cancels none but their own."""
    kiosk = api(UserFactory())
    theirs = kiosk.post("/api/v1/vend/1", V, format="json").json()["id"]
    client = api(fleet[role])

    listed = [t["id"] for t in client.get("/api/v1/transactions/").json()["results"]]
    assert (theirs in listed) is sees_all
    assert client.get(f"/api/v1/transactions/{theirs}").status_code == (200 if sees_all else 404)
    cancel = client.post(f"/api/v1/transactions/{theirs}/cancel")
    assert cancel.status_code == (200 if cancels_others else 404)
    assert Transaction.objects.get(pk=theirs).state == ("cancelled" if cancels_others else "queued")


def test_a_technician_reads_and_cancels_their_own_vend(fleet):
    client = api(fleet[TE])
    mine = client.post("/api/v1/vend/1", V, format="json").json()["id"]

    assert [t["id"] for t in client.get("/api/v1/transactions/").json()["results"]] == [mine]
    assert client.post(f"/api/v1/transactions/{mine}/cancel").status_code == 200


def test_a_technicians_own_vend_answers_without_its_price_and_a_kiosks_with_it(fleet):
    client = api(fleet[TE])
    vend = client.post("/api/v1/vend/1", V, format="json").json()
    listed = client.get("/api/v1/transactions/").json()["results"]
    detail = client.get(f"/api/v1/transactions/{vend['id']}").json()
    cancelled = client.post(f"/api/v1/transactions/{vend['id']}/cancel").json()
    on_page = post_json(page(fleet[TE]), f"{DASH}vend", {"device_id": DEVICE_ID, "slot": 1})

    assert [vend["product"]["price"], listed[0]["product"]["price"]] == [None, None]
    assert [detail["product"]["price"], cancelled["product"]["price"]] == [None, None]
    assert on_page.json()["product"]["price"] is None
    kiosk = api(UserFactory()).post("/api/v1/vend/2", V, format="json").json()
    assert kiosk["product"]["price"] == "1.50"
    assert api(fleet[OP]).get("/api/v1/transactions/").json()["results"][0]["product"]["price"]


def test_a_driver_is_not_shown_the_discovery_listeners_last_request(fleet):
    from devices.models import CommunicationLog
    from vending_site.dashboard.views import DISCOVERY_ENDPOINT

    CommunicationLog.objects.create(
        direction="in",
        transport="wifi",
        endpoint=DISCOVERY_ENDPOINT,
        message="VENDING_SERVER_DISCOVERY",
        remote_addr="192.168.1.50",
    )

    driver_sees = page(fleet[DR]).get(f"{DASH}machines").json()["discovery"]
    operator_sees = page(fleet[OP]).get(f"{DASH}machines").json()["discovery"]

    assert driver_sees["last_request_from"] == "" and driver_sees["message"] == ""
    assert operator_sees["last_request_from"] == "192.168.1.50"


# --- The dashboard ----------------------------------------------------------------------------

DASH = "/dashboard/api/"


def post_json(client: Client, url: str, body: dict):
    return client.post(url, data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("role_index", range(4), ids=ROLES)
@pytest.mark.parametrize(
    ("url", "body", "expected", "perm"),
    [
        (
            "vend",
            {"device_id": DEVICE_ID, "slot": 1},
            (202, 403, 202, 403),
            "devices.operate_device",
        ),
        (
            "machines/select",
            {"device_id": DEVICE_ID},
            (200, 403, 200, 403),
            "devices.operate_device",
        ),
        # approved and at its address: accepting it changes nothing (200)
        (
            "machines/approve",
            {"device_id": DEVICE_ID, "address": "192.168.1.50"},
            (None, 403, None, 403),
            "devices.change_device",
        ),
        (
            "ports/request",
            {"path": "/dev/ttyUSB0", "request": "connect"},
            (200, 403, 200, 403),
            "devices.change_serialport",
        ),
        # past the permission, an unknown vend is a 404
        (
            "transactions/resolve",
            {"transaction_id": "00000000-0000-4000-8000-000000000000", "dispensed": True},
            (404, 403, 403, 403),
            "transactions.change_transaction",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and "." not in value else None,
)
def test_dashboard_actions_per_role(fleet, url, body, expected, perm, role_index):
    SerialPort.objects.create(path="/dev/ttyUSB0")

    response = post_json(page(fleet[ROLES[role_index]]), DASH + url, body)

    if expected[role_index] is None:  # allowed: whatever the service answers, not a 403
        assert response.status_code != 403, response.content
    else:
        assert response.status_code == expected[role_index], response.content
    if response.status_code == 403:
        refused(response, perm)


@pytest.mark.parametrize(
    ("role", "machines", "prices", "logs", "ports", "buttons"),
    [
        (OP, 2, True, True, True, {"slot__vend", "machine__activate", "machine__approve"}),
        (DR, 1, False, False, False, set()),
        (TE, 2, False, True, True, {"slot__vend", "machine__activate", "machine__approve"}),
        (VI, 2, True, True, True, set()),
    ],
    ids=ROLES,
)
def test_the_dashboard_loads_for_each_role_with_what_it_may_see_and_use(
    fleet, role, machines, prices, logs, ports, buttons
):
    SerialPort.objects.create(path="/dev/ttyUSB0")
    client = page(fleet[role])

    html = client.get("/").content.decode()
    state = client.get(DASH + "state").json()

    assert len(state["machines"]) == machines
    assert (state["slots"][0]["price"] is not None) is prices
    assert state["can"]["show_logs"] is logs
    assert (len(state["ports"]) == 1) is ports
    for button in ("slot__vend", "machine__activate", "machine__approve"):
        assert (button in html) is (button in buttons), button
    if role != OP:
        assert "Your role does not allow" in html  # the reason for what is missing


@pytest.mark.parametrize(("role", "status"), [(OP, 200), (DR, 404), (TE, 200), (VI, 200)])
def test_a_driver_cannot_open_another_machine_on_the_dashboard(fleet, role, status):
    client = page(fleet[role])

    assert client.get(DASH + "state", {"device": OTHER}).status_code == status
    assert client.get(DASH + "transactions", {"device": OTHER}).status_code == status


@pytest.mark.parametrize(("role", "sees"), [(OP, True), (DR, False), (TE, False), (VI, True)])
def test_the_dashboards_transactions_feed_needs_view_transaction(fleet, role, sees):
    api(UserFactory()).post("/api/v1/vend/1", V, format="json")

    feed = page(fleet[role]).get(DASH + "transactions").json()["transactions"]

    assert len(feed) == (1 if sees else 0)
    assert all("requested_by" not in row for row in feed)


def test_a_staff_account_in_no_role_may_not_open_the_dashboard(fleet, settings):
    settings.DASHBOARD_PUBLIC = False
    client = page(UserFactory(is_staff=True, vend_client=False))

    assert client.get("/").status_code == 403
    refused(client.get(DASH + "state"), "devices.view_device")


# --- The admin --------------------------------------------------------------------------------


@pytest.mark.parametrize("role_index", range(4), ids=ROLES)
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/admin/devices/device/", (200, 200, 200, 200)),
        ("/admin/devices/command/", (200, 403, 200, 200)),
        ("/admin/devices/communicationlog/", (200, 403, 200, 200)),
        ("/admin/devices/serialport/", (200, 403, 200, 200)),
        ("/admin/inventory/product/", (200, 200, 200, 200)),
        ("/admin/inventory/slot/", (200, 200, 200, 200)),
        ("/admin/inventory/stockmovement/", (200, 200, 200, 200)),
        ("/admin/inventory/pricechange/", (200, 403, 403, 200)),
        ("/admin/transactions/transaction/", (200, 403, 403, 200)),
        ("/admin/auth/user/", (200, 403, 403, 403)),
        ("/admin/auth/group/", (200, 403, 403, 403)),
        ("/admin/inventory/product/add/", (200, 403, 403, 403)),
    ],
)
def test_admin_pages_per_role(fleet, path, expected, role_index):
    response = page(fleet[ROLES[role_index]]).get(path)

    assert response.status_code == expected[role_index]


# Actions that change something: offered to no role without their permission.
GUARDED_ACTIONS = {
    "accept_move",
    "make_active",
    "queue_status",
    "queue_reset",
    "approve",
    "revoke_approval",
    "issue_token",
    "restock_selected",
    "connect",
    "disconnect",
    "automatic",
    "mark_dispensed",
    "refund_not_dispensed",
}


DEVICE_ACTIONS = {
    "make_active",
    "queue_status",
    "queue_reset",
    "approve",
    "accept_move",
    "revoke_approval",
    "issue_token",
}
PORT_ACTIONS = {"connect", "disconnect", "automatic"}


def _actions(response) -> set[str]:
    form = response.context.get("action_form")
    return {name for name, _label in form.fields["action"].choices if name} if form else set()


@pytest.mark.parametrize(
    ("path", "per_role"),
    [
        (
            "/admin/devices/device/",
            {
                OP: DEVICE_ACTIONS,
                DR: set(),
                TE: DEVICE_ACTIONS,
                VI: set(),
            },
        ),
        (
            "/admin/inventory/slot/",
            {OP: {"restock_selected"}, DR: {"restock_selected"}, TE: set(), VI: set()},
        ),
        (
            "/admin/devices/serialport/",
            {OP: PORT_ACTIONS, TE: PORT_ACTIONS, VI: set()},
        ),
        (
            "/admin/transactions/transaction/",
            {OP: {"mark_dispensed", "refund_not_dispensed"}, VI: set()},
        ),
    ],
    ids=["device", "slot", "serialport", "transaction"],
)
def test_admin_actions_are_offered_only_with_their_permission(fleet, path, per_role):
    for role, wanted in per_role.items():
        offered = _actions(page(fleet[role]).get(path))
        assert wanted <= offered, (role, offered)
        assert (offered & GUARDED_ACTIONS) <= wanted, (role, offered)


def test_a_viewer_cannot_run_a_port_action_by_posting_it(fleet):
    SerialPort.objects.create(path="/dev/ttyUSB0")
    port = SerialPort.objects.get()

    page(fleet[VI]).post(
        "/admin/devices/serialport/", {"action": "connect", "_selected_action": [port.pk]}
    )

    port.refresh_from_db()
    assert port.requested == "auto"


def test_a_driver_restocks_in_the_admin_only_on_their_route(fleet):
    slots = Slot.objects.filter(number=1).order_by("device__device_id")
    client = page(fleet[DR])

    listed = client.get("/admin/inventory/slot/").context["cl"].result_list
    client.post(
        "/admin/inventory/slot/",
        {"action": "restock_selected", "_selected_action": [s.pk for s in slots]},
    )

    assert {s.device.device_id for s in listed} == {DEVICE_ID}
    assert {s.device.device_id: s.quantity for s in Slot.objects.filter(number=1)} == {
        DEVICE_ID: 10,  # filled to capacity
        OTHER: 1,  # not on the route: not even selectable
    }
    other = Slot.objects.get(device__device_id=OTHER, number=1)
    assert client.get(f"/admin/inventory/slot/{other.pk}/change/").status_code == 302
    assert {m.slot.device.device_id for m in StockMovement.objects.all()} == {DEVICE_ID}
    movements = client.get("/admin/inventory/stockmovement/").context["cl"].result_list
    assert {m.slot.device.device_id for m in movements} == {DEVICE_ID}


def test_a_driver_sees_only_their_machines_in_the_device_admin(fleet):
    client = page(fleet[DR])
    other = Device.objects.get(device_id=OTHER)

    listed = client.get("/admin/devices/device/").context["cl"].result_list

    assert [d.device_id for d in listed] == [DEVICE_ID]
    assert client.get(f"/admin/devices/device/{other.pk}/change/").status_code == 302


@pytest.mark.parametrize(
    ("role", "shown", "editable"),
    [(OP, True, True), (DR, False, False), (TE, False, False), (VI, True, False)],
    ids=ROLES,
)
def test_admin_prices_are_hidden_or_read_only_without_the_price_permissions(
    fleet, role, shown, editable
):
    client = page(fleet[role])
    slot = Slot.objects.get(device__device_id=DEVICE_ID, number=1)
    product = Product.objects.get(sku="SKU-1")

    slot_form = client.get(f"/admin/inventory/slot/{slot.pk}/change/")
    product_list = client.get("/admin/inventory/product/").content.decode()
    slot_list = client.get("/admin/inventory/slot/").content.decode()

    assert slot_form.status_code == 200
    assert ('name="price"' in slot_form.content.decode()) is editable
    assert ("field-price" in slot_form.content.decode()) is shown
    assert ("column-price_shown" in product_list) is shown
    assert ("column-price_charged" in slot_list) is shown
    product_form = client.get(f"/admin/inventory/product/{product.pk}/change/").content.decode()
    assert ("field-price" in product_form) is shown


def test_a_technician_saves_a_slot_without_touching_its_price(fleet):
    slot = Slot.objects.get(device__device_id=DEVICE_ID, number=1)
    Slot.objects.filter(pk=slot.pk).update(price="2.00")
    client = page(fleet[TE])
    form = client.get(f"/admin/inventory/slot/{slot.pk}/change/").context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update({"low_stock_threshold": 4, "price": "0.01", "initial-quantity": 5})

    response = client.post(f"/admin/inventory/slot/{slot.pk}/change/", data)

    assert response.status_code == 302, response.content
    slot.refresh_from_db()
    assert (slot.low_stock_threshold, str(slot.price)) == (4, "2.00")


# --- The live socket --------------------------------------------------------------------------


def _event(kind: str, **payload) -> dict:
    return {"id": 1, "kind": kind, "payload": payload, "at": "2026-12-07T12:00:00+00:00"}


@pytest.mark.parametrize(
    ("role", "admitted"),
    [
        (OP, {"device", "other-device", "stock", "txn", "own-txn", "log", "ports", "command"}),
        (DR, {"device", "stock", "own-txn"}),
        (TE, {"device", "other-device", "stock", "own-txn", "log", "ports", "command"}),
        (VI, {"device", "other-device", "stock", "txn", "own-txn", "log", "ports", "command"}),
    ],
    ids=ROLES,
)
def test_the_live_socket_sends_each_role_what_the_page_shows_it(fleet, settings, role, admitted):
    settings.DASHBOARD_PUBLIC = False
    user = fleet[role]
    audience = audience_for(user)
    events = {
        "device": _event("device", device_id=DEVICE_ID),
        "other-device": _event("device", device_id=OTHER),
        "stock": _event("stock", device_id=DEVICE_ID, slot=1),
        "txn": _event("transaction", device_id=DEVICE_ID, requested_by=None),
        "own-txn": _event("transaction", device_id=DEVICE_ID, requested_by=user.pk),
        "log": _event("log", device_id=DEVICE_ID),
        "ports": _event("ports", path="/dev/ttyUSB0"),
        "command": _event("command", device_id=DEVICE_ID),
    }

    assert {name for name, event in events.items() if audience.admits(event)} == admitted
    assert for_page(events["own-txn"])["payload"] == {"device_id": DEVICE_ID}


def test_the_live_socket_refuses_a_staff_account_in_no_role(db, settings):
    settings.DASHBOARD_PUBLIC = False

    assert audience_for(UserFactory(is_staff=True, vend_client=False)) is None
    settings.DASHBOARD_PUBLIC = True
    assert audience_for(UserFactory(is_staff=True, vend_client=False)).everything


@pytest.mark.parametrize(
    ("role", "admitted"),
    [
        (OP, {"mine", "other", "no-machine"}),
        (DR, {"mine"}),
        (TE, {"mine", "other", "no-machine"}),
        (VI, {"mine", "other", "no-machine"}),
    ],
    ids=ROLES,
)
def test_the_live_socket_sends_a_driver_only_the_alerts_of_their_machines(
    fleet, settings, role, admitted
):
    # The page's list (attention_feed) and the REST list keep an alert about no machine (a
    # silent process, a failing webhook) from a Driver; the socket must not push it either.
    settings.DASHBOARD_PUBLIC = False
    audience = audience_for(fleet[role])
    events = {
        "mine": _event("alert", id=1, device_id=DEVICE_ID),
        "other": _event("alert", id=2, device_id=OTHER),
        "no-machine": _event("alert", id=3, device_id=None, subject="service:sweeper"),
    }

    assert {name for name, event in events.items() if audience.admits(event)} == admitted


def test_the_live_socket_sends_alerts_only_to_those_who_may_see_alerts(db, settings):
    # A group an Operator made with the machines but not the alerts: the page lists no alert
    # for it (attention_feed needs view_alert), so neither does the socket.
    from django.contrib.auth.models import Permission

    settings.DASHBOARD_PUBLIC = False
    user = UserFactory(is_staff=True, vend_client=False)
    user.user_permissions.add(Permission.objects.get(codename="view_device"))
    audience = audience_for(user)

    assert audience.admits(_event("device", device_id=DEVICE_ID))
    assert not audience.admits(_event("alert", id=1, device_id=DEVICE_ID))
