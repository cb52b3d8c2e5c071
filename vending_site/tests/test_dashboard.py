"""The operator dashboard: who may see and act, the state it renders, and its actions."""

import json
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from devices.choices import Direction, PortRequest, Transport
from devices.models import CommunicationLog, Device, SerialPort
from inventory.demo import DEMO_DEVICE_ID, load_demo_data
from inventory.models import Slot
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory
from transactions.choices import TransactionState
from transactions.models import Transaction
from transactions.services import request_vend
from vending_site.alerts.models import Alert, AlertRule
from vending_site.dashboard.views import FEED_LIMIT, vends_per_hour
from vending_site.models import LiveEvent

pytestmark = pytest.mark.django_db

DEVICE_ID = "ESP32_6CC8404FE03C"
STATE_URL = "/dashboard/api/state"
VEND_URL = "/dashboard/api/vend"
SELECT_URL = "/dashboard/api/machines/select"
PORT_URL = "/dashboard/api/ports/request"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_state(response) -> dict:
    """The state document the page embeds for its script."""
    html = response.content.decode()
    start = html.index('<script id="dashboard-state" type="application/json">')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


def post_json(client: Client, url: str, data: dict):
    return client.post(url, data=json.dumps(data), content_type="application/json")


def make_transaction(device: Device, *, state: str, created_at: datetime) -> Transaction:
    slot = device.slots.order_by("number").first()
    return Transaction.objects.create(
        device=device,
        slot=slot,
        slot_number=slot.number,
        product=slot.product,
        product_name=slot.product.name,
        product_sku=slot.product.sku,
        price=slot.product.price,
        state=state,
        created_at=created_at,
        updated_at=created_at,
    )


# --- Who may see it -------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_admin_login_and_back(client, settings):
    settings.DASHBOARD_PUBLIC = False

    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/"


def test_a_logged_in_user_who_is_not_staff_is_refused_with_403(settings):
    settings.DASHBOARD_PUBLIC = False

    assert logged_in(UserFactory()).get("/").status_code == 403
    assert logged_in(UserFactory()).get(STATE_URL).status_code == 403


def test_staff_see_the_demo_machine_its_slots_and_the_controls(staff):
    load_demo_data()

    response = logged_in(staff).get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-can-act="true"' in html
    assert "slot__vend" in html and "machine__activate" in html
    assert "dashboard/dashboard.js" in html and "dashboard/dashboard.css" in html
    assert "csrftoken" in response.cookies
    state = page_state(response)
    assert state["can_act"] is True
    assert state["selected"] == DEMO_DEVICE_ID
    assert [m["name"] for m in state["machines"]] == ["Demo machine"]
    assert [(s["number"], s["quantity"]) for s in state["slots"]] == [
        (1, 8),
        (2, 6),
        (3, 10),
        (4, 2),
        (5, 0),
    ]


def test_the_page_escapes_server_strings_in_its_embedded_state(staff):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", name="</script><script>alert(1)</script>")

    response = logged_in(staff).get("/")

    assert "<script>alert(1)" not in response.content.decode()
    assert page_state(response)["machines"][0]["name"] == "</script><script>alert(1)</script>"


def test_a_stale_device_in_the_address_falls_back_to_the_default_machine(staff, online_device):
    response = logged_in(staff).get("/?device=nonsense!")

    assert response.status_code == 200
    assert page_state(response)["selected"] == DEVICE_ID


def test_the_page_opens_on_the_default_machine_when_it_is_online(staff, online_device):
    DeviceFactory(device_id="ESP32_000000000001", last_seen=timezone.now())

    assert page_state(logged_in(staff).get("/"))["selected"] == DEVICE_ID


def test_the_page_opens_on_the_first_online_machine_when_the_default_is_offline(staff):
    DeviceFactory(device_id="ESP32_000000000001", is_active=True, last_seen=None)
    DeviceFactory(device_id="ESP32_000000000002", last_seen=timezone.now() - timedelta(hours=1))
    DeviceFactory(device_id="ESP32_000000000003", last_seen=timezone.now())
    DeviceFactory(device_id="ESP32_000000000004", last_seen=timezone.now())

    state = page_state(logged_in(staff).get("/"))

    assert state["selected"] == "ESP32_000000000003"
    shown = next(m for m in state["machines"] if m["device_id"] == state["selected"])
    assert shown["online"] is True and shown["is_active"] is False


def test_the_page_opens_on_the_offline_default_machine_when_none_is_online(staff):
    DeviceFactory(device_id="ESP32_000000000001", last_seen=None)
    DeviceFactory(device_id="ESP32_000000000002", is_active=True, last_seen=None)

    state = page_state(logged_in(staff).get("/"))

    assert state["selected"] == "ESP32_000000000002"
    assert [m["online"] for m in state["machines"]] == [False, False]


def test_the_page_opens_on_the_first_machine_when_none_is_online_or_default(staff):
    DeviceFactory(device_id="ESP32_000000000002", last_seen=None)
    DeviceFactory(device_id="ESP32_000000000001", last_seen=None)

    assert page_state(logged_in(staff).get("/"))["selected"] == "ESP32_000000000001"


def test_a_public_dashboard_shows_anonymous_visitors_a_read_only_view(
    client, settings, online_device
):
    settings.DASHBOARD_PUBLIC = True

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-can-act="false"' in html
    assert "slot__vend" not in html
    assert "machine__activate" not in html
    assert "Read-only view" in html
    state = page_state(response)
    assert state["can_act"] is False
    assert len(state["slots"]) == 5
    assert client.get(STATE_URL).status_code == 200


def test_actions_refuse_anonymous_visitors_even_on_a_public_dashboard(
    client, settings, online_device
):
    settings.DASHBOARD_PUBLIC = True
    SerialPort.objects.create(path="/dev/ttyUSB0")

    responses = [
        post_json(client, VEND_URL, {"device_id": DEVICE_ID, "slot": 1}),
        post_json(client, SELECT_URL, {"device_id": DEVICE_ID}),
        post_json(client, PORT_URL, {"path": "/dev/ttyUSB0", "request": "connect"}),
    ]

    assert [r.status_code in (401, 403) for r in responses] == [True, True, True]
    assert not Transaction.objects.exists()
    assert SerialPort.objects.get().requested == PortRequest.AUTO


def test_actions_refuse_a_user_who_is_not_staff(online_device, settings):
    settings.DASHBOARD_PUBLIC = True
    client = logged_in(UserFactory())

    response = post_json(client, VEND_URL, {"device_id": DEVICE_ID, "slot": 1})

    assert response.status_code == 403
    assert response.json() == {
        "detail": "Only staff holding devices.operate_device may do this.",
        "code": "staff_only",
    }
    assert not Transaction.objects.exists()


def test_actions_need_the_csrf_token_of_the_session(staff, online_device):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    token = client.get("/").cookies["csrftoken"].value
    body = json.dumps({"device_id": DEVICE_ID, "slot": 1})

    refused = client.post(VEND_URL, data=body, content_type="application/json")
    accepted = client.post(
        VEND_URL, data=body, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )

    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert accepted.status_code == 202
    assert Transaction.objects.count() == 1


# --- The state document ---------------------------------------------------------------------


def test_the_state_endpoint_describes_machines_slots_connections_and_feeds(staff, online_device):
    offline = DeviceFactory(
        device_id="ESP32_BBBBBBBBBBBB",
        transport=Transport.SERIAL,
        firmware_version="1.4",
        last_seen=timezone.now() - timedelta(hours=2),
    )
    Slot.objects.filter(device=online_device, number=2).update(quantity=0)
    SerialPort.objects.create(path="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60, device=offline)
    CommunicationLog.objects.create(
        direction=Direction.IN,
        transport=Transport.WIFI,
        endpoint="udp discovery",
        remote_addr="192.168.1.50",
        message="ESP32_DISCOVERY_REQUEST -> SERVER_IP:192.168.1.2:5000",
    )
    txn = request_vend(device=online_device, slot_number=1, user=staff)

    body = logged_in(staff).get(STATE_URL).json()

    assert body["selected"] == DEVICE_ID
    assert body["last_event_id"] == LiveEvent.objects.order_by("-id").first().pk
    machines = {m["device_id"]: m for m in body["machines"]}
    assert machines[DEVICE_ID]["online"] is True
    assert machines[DEVICE_ID]["is_active"] is True
    assert machines["ESP32_BBBBBBBBBBBB"]["online"] is False
    assert machines["ESP32_BBBBBBBBBBBB"]["transport_label"] == "USB serial"
    assert machines["ESP32_BBBBBBBBBBBB"]["firmware"] == "1.4"
    slots = {s["number"]: s for s in body["slots"]}
    assert slots[1]["quantity"] == 4
    assert slots[2]["quantity"] == 0
    assert slots[1]["price"] == "1.50"
    assert body["ports"] == [
        {
            "path": "/dev/ttyUSB0",
            "usb_id": "10C4:EA60",
            "description": "",
            "likely_esp32": False,
            "present": True,
            "is_open": False,
            "device_id": "ESP32_BBBBBBBBBBBB",
            "requested": "auto",
            "last_error": "",
            "reported_at": body["ports"][0]["reported_at"],
        }
    ]
    assert body["discovery"]["last_request_from"] == "192.168.1.50"
    assert body["discovery"]["last_request_at"] is not None
    assert [t["id"] for t in body["transactions"]] == [str(txn.pk)]
    assert body["transactions"][0]["state"] == "queued"
    assert body["logs"][0]["endpoint"] == "udp discovery"
    assert len(body["vends_per_hour"]) == 24


def test_the_state_endpoint_shows_the_slots_of_the_machine_asked_for(staff, online_device):
    other = DeviceFactory(device_id="ESP32_CCCCCCCCCCCC")
    SlotFactory(device=other, number=7, quantity=3)
    client = logged_in(staff)

    body = client.get(STATE_URL, {"device": "cc:cc:cc:cc:cc:cc"}).json()
    unknown = client.get(STATE_URL, {"device": "ESP32_DDDDDDDDDDDD"})

    assert body["selected"] == "ESP32_CCCCCCCCCCCC"
    assert [s["number"] for s in body["slots"]] == [7]
    assert unknown.status_code == 404
    assert "ESP32_DDDDDDDDDDDD" in unknown.json()["detail"]


def test_the_feeds_are_newest_first_and_capped(staff, online_device):
    now = timezone.now()
    CommunicationLog.objects.bulk_create(
        CommunicationLog(
            direction=Direction.IN,
            transport=Transport.WIFI,
            message=f"line {i}",
            created_at=now - timedelta(seconds=100 - i),
        )
        for i in range(FEED_LIMIT + 10)
    )

    logs = logged_in(staff).get(STATE_URL).json()["logs"]

    assert len(logs) == FEED_LIMIT
    assert logs[0]["message"] == f"line {FEED_LIMIT + 9}"


def test_the_state_endpoint_makes_the_same_queries_for_few_or_many_rows(
    staff, online_device, django_assert_max_num_queries
):
    client = logged_in(staff)
    # Session and user, the last event id, then one query per part of the page.
    # 12 for the page's data (heartbeats and alerts included) and session; a read never sweeps.
    with django_assert_max_num_queries(12) as few:
        client.get(STATE_URL)

    for n in range(8):
        device = DeviceFactory(last_seen=timezone.now())
        SlotFactory(device=device, number=1, product=ProductFactory())
        SerialPort.objects.create(path=f"/dev/ttyUSB{n}", device=device)
    Slot.objects.filter(device=online_device).update(quantity=10)
    for n in range(20):
        request_vend(device=online_device, slot_number=n % 5 + 1, user=staff)
    for n in range(8):  # alerts acknowledged by someone: their users come with them
        Alert.objects.create(
            rule=AlertRule.objects.get(key="machine_offline"),
            subject=f"machine:{n}",
            title="offline",
            severity="warning",
            state="acknowledged",
            acknowledged_by=staff,
        )
    with django_assert_max_num_queries(12) as many:
        client.get(STATE_URL)

    assert len(many.captured_queries) == len(few.captured_queries)


# --- Actions --------------------------------------------------------------------------------


def test_a_vend_from_the_dashboard_queues_a_transaction_through_the_vend_service(
    staff, online_device
):
    response = post_json(logged_in(staff), VEND_URL, {"device_id": DEVICE_ID, "slot": 3})

    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "queued"
    assert body["slot_id"] == 3
    txn = Transaction.objects.get(pk=body["id"])
    assert txn.requested_by == staff
    assert txn.command.kind == "VEND"
    assert Slot.objects.get(device=online_device, number=3).quantity == 4
    assert LiveEvent.objects.filter(kind="transaction", payload__id=body["id"]).exists()


def test_a_vend_of_an_empty_slot_answers_with_the_services_message(staff, online_device):
    Slot.objects.filter(device=online_device, number=2).update(quantity=0)

    response = post_json(logged_in(staff), VEND_URL, {"device_id": DEVICE_ID, "slot": 2})

    assert response.status_code == 409
    assert response.json()["code"] == "out_of_stock"
    assert response.json()["detail"] == f"Slot 2 on {DEVICE_ID} (Product 2) is empty."
    assert not Transaction.objects.exists()


def test_a_vend_on_an_offline_machine_answers_with_the_services_message(staff):
    DeviceFactory(device_id="ESP32_EEEEEEEEEEEE", last_seen=None)

    response = post_json(logged_in(staff), VEND_URL, {"device_id": "ESP32_EEEEEEEEEEEE", "slot": 1})

    assert response.status_code == 409
    assert "is offline" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{"device_id": DEVICE_ID}, {"device_id": DEVICE_ID, "slot": 0}, {"slot": 1}, ["nope"]],
)
def test_a_malformed_vend_request_is_refused_with_400(staff, online_device, body):
    response = post_json(logged_in(staff), VEND_URL, body)

    assert response.status_code == 400
    assert response.json()["detail"]


def test_make_active_selects_the_machine_through_the_service(staff, online_device):
    other = DeviceFactory(device_id="ESP32_FFFFFFFFFFFF")

    response = post_json(logged_in(staff), SELECT_URL, {"device_id": other.device_id})

    assert response.status_code == 200
    assert response.json()["is_active"] is True
    assert list(Device.objects.filter(is_active=True)) == [other]
    assert LiveEvent.objects.filter(kind="device", payload__device_id=other.device_id).exists()


def test_the_page_shows_a_pending_machine_and_staff_approve_the_address_they_saw(
    staff, online_device
):
    pending = DeviceFactory(
        device_id="ESP32_FFFFFFFFFFFF", approved=False, bound_address=None, moved_to="10.0.0.7"
    )
    client = logged_in(staff)

    machines = {m["device_id"]: m for m in page_state(client.get("/"))["machines"]}
    changed = post_json(
        client,
        "/dashboard/api/machines/approve",
        {"device_id": pending.device_id, "address": "10.0.0.8"},
    )
    response = post_json(
        client,
        "/dashboard/api/machines/approve",
        {"device_id": pending.device_id, "address": "10.0.0.7"},
    )

    assert machines[pending.device_id]["admission"] == "awaiting approval"
    assert machines[pending.device_id]["asks_from"] == "10.0.0.7"
    assert machines[DEVICE_ID]["admission"] == "approved"
    assert changed.status_code == 409
    assert changed.json()["code"] == "address_changed"
    assert response.status_code == 200
    assert response.json()["admission"] == "approved"
    device = Device.objects.get(pk=pending.pk)
    assert (device.approved, device.bound_address) == (True, "10.0.0.7")
    assert device.slots.count() == 5


def test_approving_from_the_page_refuses_a_non_staff_user(online_device):
    pending = DeviceFactory(device_id="ESP32_FFFFFFFFFFFF", approved=False)

    response = post_json(
        logged_in(UserFactory()),
        "/dashboard/api/machines/approve",
        {"device_id": pending.device_id},
    )

    assert response.status_code == 403
    assert Device.objects.get(pk=pending.pk).approved is False


def test_make_active_refuses_a_non_staff_user(online_device):
    other = DeviceFactory(device_id="ESP32_FFFFFFFFFFFF")

    response = post_json(logged_in(UserFactory()), SELECT_URL, {"device_id": other.device_id})

    assert response.status_code == 403
    assert Device.objects.get(is_active=True) == online_device


def test_connect_and_disconnect_record_the_request_for_the_serial_bridge(staff):
    SerialPort.objects.create(path="/dev/ttyUSB0")
    client = logged_in(staff)

    connected = post_json(client, PORT_URL, {"path": "/dev/ttyUSB0", "request": "connect"})
    assert connected.status_code == 200
    assert connected.json()["requested"] == "connect"
    assert SerialPort.objects.get().requested == PortRequest.CONNECT

    disconnected = post_json(client, PORT_URL, {"path": "/dev/ttyUSB0", "request": "disconnect"})
    assert disconnected.status_code == 200
    assert SerialPort.objects.get().requested == PortRequest.DISCONNECT
    assert LiveEvent.objects.filter(kind="ports").count() == 2


def test_a_port_request_for_a_port_never_reported_is_refused_with_404(staff):
    response = post_json(logged_in(staff), PORT_URL, {"path": "/dev/nothing", "request": "connect"})

    assert response.status_code == 404
    assert not SerialPort.objects.exists()


def test_a_port_request_refuses_a_non_staff_user():
    SerialPort.objects.create(path="/dev/ttyUSB0")

    response = post_json(
        logged_in(UserFactory()), PORT_URL, {"path": "/dev/ttyUSB0", "request": "connect"}
    )

    assert response.status_code == 403
    assert SerialPort.objects.get().requested == PortRequest.AUTO


# --- Vends per hour -------------------------------------------------------------------------


def test_vends_per_hour_counts_succeeded_and_failed_in_the_hour_they_were_requested(
    online_device,
):
    now = datetime(2026, 3, 10, 14, 25, tzinfo=ZoneInfo("UTC"))
    for state, created_at in [
        (TransactionState.SUCCEEDED, now - timedelta(minutes=5)),  # this hour
        (TransactionState.SUCCEEDED, now - timedelta(minutes=20)),  # this hour
        (TransactionState.FAILED, now - timedelta(minutes=24)),  # this hour (14:01)
        (TransactionState.FAILED, now - timedelta(minutes=26)),  # 13:59: the hour before
        (TransactionState.SUCCEEDED, now - timedelta(hours=23)),  # 15:25 yesterday: first hour
        (TransactionState.SUCCEEDED, now - timedelta(hours=23, minutes=30)),  # 14:55: too old
        (TransactionState.EXPIRED, now - timedelta(minutes=5)),  # neither succeeded nor failed
        (TransactionState.QUEUED, now - timedelta(minutes=1)),  # not settled
        (TransactionState.UNCONFIRMED, now - timedelta(minutes=1)),  # not settled
    ]:
        make_transaction(online_device, state=state, created_at=created_at)

    hours = vends_per_hour(now=now)

    assert len(hours) == 24
    assert hours[0]["hour"] == "2026-03-09T15:00:00+00:00"
    assert hours[-1]["hour"] == "2026-03-10T14:00:00+00:00"
    assert (hours[-1]["succeeded"], hours[-1]["failed"]) == (2, 1)
    assert (hours[-2]["succeeded"], hours[-2]["failed"]) == (0, 1)
    assert (hours[0]["succeeded"], hours[0]["failed"]) == (1, 0)
    assert sum(h["succeeded"] + h["failed"] for h in hours) == 5


def test_vends_per_hour_has_24_empty_hours_when_nothing_was_sold(db):
    hours = vends_per_hour()

    assert len(hours) == 24
    assert all(h["succeeded"] == 0 and h["failed"] == 0 for h in hours)


def test_vends_per_hour_follows_local_hours_in_a_half_hour_time_zone(settings, online_device):
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+05:30: local hours start at :30 UTC
    now = datetime(2026, 3, 10, 9, 40, tzinfo=ZoneInfo("UTC"))  # 15:10 local
    make_transaction(online_device, state="succeeded", created_at=now - timedelta(minutes=5))
    make_transaction(online_device, state="failed", created_at=now - timedelta(minutes=15))

    hours = vends_per_hour(now=now)

    assert hours[-1]["hour"] == "2026-03-10T15:00:00+05:30"
    assert (hours[-1]["succeeded"], hours[-1]["failed"]) == (1, 0)
    assert (hours[-2]["succeeded"], hours[-2]["failed"]) == (0, 1)


def test_the_price_of_a_slot_is_sent_as_a_decimal_string(staff, online_device):
    Slot.objects.filter(device=online_device, number=1).update(
        product=ProductFactory(sku="X", price=Decimal("2.05"))
    )

    slots = logged_in(staff).get(STATE_URL).json()["slots"]

    assert slots[0]["price"] == "2.05"
