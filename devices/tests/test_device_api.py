"""The /esp32/... endpoints, driven with the exact bodies the deployed firmware sends."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from devices.choices import CommandKind, CommandState, Direction, LogLevel, Protocol
from devices.models import Command, CommunicationLog, Device
from inventory.choices import MovementReason
from inventory.models import Slot, StockMovement
from transactions.choices import TransactionState
from transactions.commands import queue_command
from transactions.models import Transaction
from transactions.services import request_vend

from .helpers import (
    DEVICE_ID,
    MAC,
    confirm,
    confirm_body,
    documented_register_body,
    ledger_rows,
    poll,
    poll_documented,
    post_json,
    post_raw,
    register_body,
    writes,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def admission_open(settings):
    """These tests pin the wire protocol: a machine that registers is admitted at once, as
    with DEVICE_APPROVAL_REQUIRED=false. Admission and binding have their own tests
    (devices/tests/test_access.py)."""
    settings.DEVICE_APPROVAL_REQUIRED = False


def slot(device: Device, number: int) -> Slot:
    return Slot.objects.get(device=device, number=number)


def register_documented(client: APIClient) -> Device:
    """Switch the fixture's device to the documented dialect, as its firmware would."""
    response = post_json(client, "/esp32/wifi/register", documented_register_body())
    assert response.status_code == 200
    return Device.objects.get(device_id=DEVICE_ID)


# --- v2.1: registration ---------------------------------------------------------------------


def test_v21_registration_creates_the_device_online_with_its_slots_and_logs_it(api_client):
    response = post_json(api_client, "/esp32/register", register_body())

    assert response.status_code == 200
    assert response.json()["device_id"] == DEVICE_ID
    assert response.json()["created"] is True
    device = Device.objects.get(device_id=DEVICE_ID)
    assert device.is_online
    assert device.ip_address == "192.168.1.105"
    assert device.mac_address == MAC
    assert device.protocol == Protocol.WIFI_V2
    assert device.reported_status == "online"
    assert device.slot_count == 5
    assert list(device.slots.values_list("number", flat=True)) == [1, 2, 3, 4, 5]
    entry = CommunicationLog.objects.get(device=device, endpoint="/esp32/register")
    assert entry.direction == Direction.IN
    assert "192.168.1.105" in entry.message


def test_registering_again_updates_the_device_instead_of_adding_one(api_client):
    post_json(api_client, "/esp32/register", register_body())

    response = post_json(
        api_client, "/esp32/register", register_body(ip_address="192.168.1.200", slots_available=6)
    )

    assert response.status_code == 200
    assert response.json()["created"] is False
    device = Device.objects.get()
    assert device.ip_address == "192.168.1.200"
    assert device.slot_count == 6
    assert device.slots.count() == 6


def test_the_first_registered_device_becomes_active_and_a_later_one_does_not_take_over(
    api_client,
):
    post_json(api_client, "/esp32/register", register_body())
    post_json(api_client, "/esp32/register", register_body(device_id="ESP32_AABBCCDDEEFF"))

    assert Device.objects.get(device_id=DEVICE_ID).is_active
    assert not Device.objects.get(device_id="ESP32_AABBCCDDEEFF").is_active


# --- v2.1: polling --------------------------------------------------------------------------


def test_idle_poll_answers_200_with_the_body_null(api_client, online_device):
    response = poll(api_client)

    assert response.status_code == 200
    assert response.content == b"null"


def test_poll_delivers_a_queued_vend_as_one_json_object(api_client, online_device):
    txn = request_vend(device=online_device, slot_number=3)

    response = poll(api_client)

    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["command"] == "VEND"
    assert body["slot"] == 3
    txn.refresh_from_db()
    assert txn.state == TransactionState.SENT
    assert Command.objects.get(transaction=txn).state == CommandState.SENT


def test_one_command_per_poll_oldest_first(api_client, online_device):
    request_vend(device=online_device, slot_number=3)
    request_vend(device=online_device, slot_number=1)

    first, second, third = poll(api_client), poll(api_client), poll(api_client)

    assert json.loads(first.content)["slot"] == 3
    assert json.loads(second.content)["slot"] == 1
    assert third.content == b"null"


def test_a_device_polling_without_registering_is_registered_on_its_first_poll(api_client):
    response = poll(api_client, "ESP32_AABBCCDDEEFF")

    assert response.status_code == 200
    assert response.content == b"null"
    device = Device.objects.get(device_id="ESP32_AABBCCDDEEFF")
    assert device.is_online
    assert device.protocol == Protocol.WIFI_V2
    assert device.slots.count() == 5
    assert CommunicationLog.objects.filter(device=device, level=LogLevel.WARNING).exists()


@pytest.mark.parametrize("spelling", ["esp32_6cc8404fe03c", MAC, MAC.lower(), "6CC8404FE03C"])
def test_polling_with_another_spelling_of_the_id_reaches_the_same_device(
    api_client, online_device, spelling
):
    request_vend(device=online_device, slot_number=3)

    response = poll(api_client, spelling)

    assert json.loads(response.content)["slot"] == 3
    assert Device.objects.count() == 1


def test_a_status_command_is_never_delivered_on_the_v21_path(api_client, online_device):
    device = register_documented(api_client)
    status = queue_command(device=device, kind=CommandKind.STATUS)

    answers = [poll(api_client).content for _ in range(3)]

    assert answers == [b"null"] * 3
    status.refresh_from_db()
    assert status.state == CommandState.QUEUED
    # It stays for the path whose firmware runs it.
    assert json.loads(poll_documented(api_client).content)["command"] == "STATUS"


def test_the_v21_path_delivers_a_vend_queued_behind_a_status_command(api_client, online_device):
    device = register_documented(api_client)
    queue_command(device=device, kind=CommandKind.STATUS)
    request_vend(device=device, slot_number=2)

    response = poll(api_client)

    assert json.loads(response.content)["command"] == "VEND"
    assert json.loads(response.content)["slot"] == 2


# --- v2.1: confirmation ---------------------------------------------------------------------


def test_a_confirmation_with_the_mac_settles_the_delivered_vend_and_keeps_the_unit_taken(
    api_client, online_device
):
    txn = request_vend(device=online_device, slot_number=3)
    poll(api_client)

    response = confirm(api_client)

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["transaction_id"] == str(txn.pk)
    txn.refresh_from_db()
    assert txn.state == TransactionState.SUCCEEDED
    assert Command.objects.get(transaction=txn).state == CommandState.COMPLETED
    assert slot(online_device, 3).quantity == 4
    assert ledger_rows(slot(online_device, 3)) == [(MovementReason.VEND, -1)]


def test_one_vend_at_a_time_a_lost_answer_does_not_take_the_next_vends_confirmation(
    api_client, online_device, settings
):
    """The machine never got the first answer (a worker died mid-answer); it polls again,
    gets the second vend of the same slot and confirms that one. The confirmation must
    settle the vend it dispensed, and the lost one must be flagged for staff."""
    settings.WIFI_ONE_VEND_AT_A_TIME = True
    lost = request_vend(device=online_device, slot_number=3)
    poll(api_client)  # the answer that never arrived
    dispensed = request_vend(device=online_device, slot_number=3)

    assert json.loads(poll(api_client).content)["slot"] == 3
    response = confirm(api_client, slot=3)

    assert response.json()["transaction_id"] == str(dispensed.pk)
    lost.refresh_from_db()
    dispensed.refresh_from_db()
    assert dispensed.state == TransactionState.SUCCEEDED
    assert lost.state == TransactionState.UNCONFIRMED  # the unit stays reserved for staff
    assert "never reached it" in lost.events.order_by("-created_at").first().note
    assert slot(online_device, 3).quantity == 3


def test_without_one_vend_at_a_time_a_confirmation_settles_the_oldest_delivered_vend(
    api_client, online_device, settings
):
    settings.WIFI_ONE_VEND_AT_A_TIME = False
    older = request_vend(device=online_device, slot_number=3)
    poll(api_client)
    newer = request_vend(device=online_device, slot_number=3)
    poll(api_client)

    assert confirm(api_client, slot=3).json()["transaction_id"] == str(older.pk)
    newer.refresh_from_db()
    assert newer.state == TransactionState.SENT


def test_a_confirmation_that_matches_nothing_is_ignored_and_logged_as_a_warning(
    api_client, online_device
):
    response = confirm(api_client)

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert not Transaction.objects.exists()
    assert not StockMovement.objects.exists()
    assert list(Slot.objects.values_list("quantity", flat=True)) == [5] * 5
    assert CommunicationLog.objects.filter(
        device=online_device, level=LogLevel.WARNING, message__contains="ignored"
    ).exists()


def test_a_confirmation_does_not_settle_a_vend_that_was_never_delivered(api_client, online_device):
    txn = request_vend(device=online_device, slot_number=3)

    response = confirm(api_client)

    assert response.json()["status"] == "ignored"
    txn.refresh_from_db()
    assert txn.state == TransactionState.QUEUED
    assert Command.objects.get(transaction=txn).state == CommandState.QUEUED


def test_a_confirmation_for_another_slot_leaves_the_delivered_vend_alone(api_client, online_device):
    txn = request_vend(device=online_device, slot_number=3)
    poll(api_client)

    response = confirm(api_client, slot=1)

    assert response.json()["status"] == "ignored"
    txn.refresh_from_db()
    assert txn.state == TransactionState.SENT


def test_a_confirmation_from_an_unknown_device_is_ignored_with_200(api_client, online_device):
    response = confirm(api_client, device_id="AA:BB:CC:DD:EE:FF")

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert not Device.objects.filter(device_id="ESP32_AABBCCDDEEFF").exists()
    assert CommunicationLog.objects.filter(
        device_key="ESP32_AABBCCDDEEFF", level=LogLevel.WARNING
    ).exists()


# --- The documented variant -----------------------------------------------------------------


def test_documented_registration_records_the_dialect_and_firmware_version(api_client):
    response = post_json(api_client, "/esp32/wifi/register", documented_register_body())

    assert response.status_code == 200
    device = Device.objects.get(device_id=DEVICE_ID)
    assert device.protocol == Protocol.WIFI_DOCUMENTED
    assert device.firmware_version == "1.0.0"
    assert device.ip_address == "192.168.1.106"
    assert device.slots.count() == 5


@pytest.mark.parametrize("spelling", [MAC, DEVICE_ID])
def test_documented_idle_poll_answers_the_plain_text_no_command(
    api_client, online_device, spelling
):
    response = poll_documented(api_client, spelling)

    assert response.status_code == 200
    assert response.content == b"NO_COMMAND"
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("kind", [CommandKind.STATUS, CommandKind.RESET])
def test_documented_poll_delivers_status_and_reset_as_json_and_completes_them(
    api_client, online_device, kind
):
    device = register_documented(api_client)
    command = queue_command(device=device, kind=kind)

    response = poll_documented(api_client)

    assert response.status_code == 200
    assert json.loads(response.content)["command"] == kind
    command.refresh_from_db()
    assert command.state == CommandState.COMPLETED
    assert poll_documented(api_client).content == b"NO_COMMAND"


def test_documented_poll_delivers_a_vend_with_its_slot(api_client, online_device):
    device = register_documented(api_client)
    request_vend(device=device, slot_number=4)

    body = json.loads(poll_documented(api_client).content)

    assert (body["command"], body["slot"]) == ("VEND", 4)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_documented_poll_without_a_device_id_header_is_400(api_client, online_device, header):
    extra = {} if header is None else {"HTTP_DEVICE_ID": header}

    response = api_client.get("/esp32/wifi/command", **extra)

    assert response.status_code == 400
    assert "Device-ID" in response.json()["detail"]


def test_documented_failed_confirmation_fails_the_vend_and_returns_the_unit(
    api_client, online_device
):
    register_documented(api_client)
    txn = request_vend(device=online_device, slot_number=3)
    poll_documented(api_client)

    response = confirm(
        api_client,
        path="/esp32/wifi/confirm",
        device_id=DEVICE_ID,
        success=False,
        message="Motor jammed",
    )

    assert response.status_code == 200
    txn.refresh_from_db()
    assert txn.state == TransactionState.FAILED
    assert "Motor jammed" in txn.failure_reason
    assert slot(online_device, 3).quantity == 5
    assert ledger_rows(slot(online_device, 3)) == [
        (MovementReason.VEND, -1),
        (MovementReason.REFUND, 1),
    ]


# --- Rules for every device endpoint --------------------------------------------------------

# (method, path, body, headers): one firmware call per endpoint, at its exact path.
DEVICE_CALLS = [
    ("post", "/esp32/register", register_body(), {}),
    ("get", f"/esp32/commands/{DEVICE_ID}", None, {}),
    ("post", "/esp32/confirm", confirm_body(), {}),
    ("post", "/esp32/wifi/register", documented_register_body(), {}),
    ("get", "/esp32/wifi/command", None, {"HTTP_DEVICE_ID": MAC}),
    ("post", "/esp32/wifi/confirm", confirm_body(device_id=DEVICE_ID), {}),
    ("get", "/status", None, {}),
]
CALL_IDS = [f"{method} {path}" for method, path, _body, _headers in DEVICE_CALLS]


def call(client: APIClient, method: str, path: str, body, headers: dict):
    if method == "post":
        return post_json(client, path, body, **headers)
    return client.get(path, **headers)


@pytest.mark.parametrize(("method", "path", "body", "headers"), DEVICE_CALLS, ids=CALL_IDS)
def test_device_endpoint_answers_200_at_its_slash_free_path_without_credentials_or_csrf(
    online_device, method, path, body, headers
):
    client = APIClient(enforce_csrf_checks=True)

    response = call(client, method, path, body, headers)

    assert not path.endswith("/")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"), DEVICE_CALLS[:-1], ids=CALL_IDS[:-1]
)
def test_a_device_endpoint_refuses_a_request_with_cookies_and_takes_nothing(
    online_device, staff, method, path, body, headers
):
    """The firmware sends no cookies; a browser on the LAN does (devices/access.py)."""
    request_vend(device=online_device, slot_number=3)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)

    response = call(client, method, path, body, headers)

    assert response.status_code == 403, response.content
    assert response.json()["code"] == "browser_request_refused"
    assert "cookies" in response.json()["detail"]
    assert Command.objects.get().state == CommandState.QUEUED


@pytest.mark.parametrize(("method", "path", "body", "headers"), DEVICE_CALLS, ids=CALL_IDS)
def test_device_endpoint_answers_200_to_an_html_accept_header(
    api_client, online_device, method, path, body, headers
):
    response = call(api_client, method, path, body, {**headers, "HTTP_ACCEPT": "text/html"})

    assert response.status_code == 200, response.content


# --- Bad input: 400 with a reason, never 500 ------------------------------------------------

BAD_BODIES = [
    ("/esp32/register", '{"device_id": "ESP32_6CC8404FE03C",', "JSON parse error"),
    ("/esp32/confirm", "not json at all", "JSON parse error"),
    ("/esp32/confirm", "[" * 30_000, "JSON parse error"),  # under MAX_REQUEST_BODY
    ("/esp32/register", json.dumps([register_body()]), "JSON object"),
    ("/esp32/confirm", json.dumps("6C:C8:40:4F:E0:3C"), "JSON object"),
    ("/esp32/confirm", "null", "JSON object"),
    ("/esp32/confirm", json.dumps(confirm_body(slot="three")), "slot"),
    ("/esp32/confirm", json.dumps(confirm_body(slot=None)), "slot"),
    ("/esp32/confirm", json.dumps(confirm_body(success="maybe")), "success"),
    ("/esp32/confirm", json.dumps(confirm_body(timestamp=-1)), "timestamp"),
    ("/esp32/register", json.dumps(register_body(slots_available=10**12)), "slots_available"),
    ("/esp32/register", json.dumps(register_body(slots_available="five")), "slots_available"),
    ("/esp32/register", json.dumps(register_body(ip_address="999.1.1.1")), "ip_address"),
    ("/esp32/register", json.dumps(register_body(device_id="ESP32_\x00AB")), "device_id"),
    ("/esp32/confirm", json.dumps(confirm_body(device_id="6C:C8\x00")), "device_id"),
    ("/esp32/confirm", json.dumps(confirm_body(message="Item\x00dispensed")), "message"),
    ("/esp32/register", json.dumps(register_body(device_id="E" * 65)), "device_id"),
    ("/esp32/confirm", json.dumps(confirm_body(device_id="6" * 65)), "device_id"),
    ("/esp32/register", json.dumps(register_body(device_id="")), "device_id"),
    ("/esp32/confirm", json.dumps(confirm_body(device_id="   ")), "device_id"),
    ("/esp32/register", json.dumps(register_body(device_id="ESP32 6CC8")), "device id"),
    ("/esp32/register", json.dumps({"ip_address": "192.168.1.105"}), "device_id"),
    ("/esp32/wifi/register", json.dumps({"device_id": ["ESP32_6CC8404FE03C"]}), "device_id"),
    ("/esp32/wifi/confirm", json.dumps({"device_id": MAC}), "slot"),
]


@pytest.mark.parametrize(("path", "raw", "named"), BAD_BODIES)
def test_a_bad_body_is_refused_with_400_and_a_reason_that_names_the_problem(
    online_device, path, raw, named
):
    client = APIClient(raise_request_exception=False)

    response = post_raw(client, path, raw)

    assert response.status_code == 400, response.content
    body = response.json()
    assert named in body["detail"]
    assert body["code"]
    assert Device.objects.count() == 1
    assert not Transaction.objects.exists()
    assert CommunicationLog.objects.filter(level=LogLevel.ERROR, endpoint=path).exists()


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/esp32/commands/" + "A" * 65, {}),
        ("/esp32/commands/ESP32_%00AB", {}),
        ("/esp32/commands/ESP32%206CC8", {}),
        ("/esp32/commands/%3Cscript%3E", {}),
        ("/esp32/wifi/command", {"HTTP_DEVICE_ID": "ESP32_\x00AB"}),
        ("/esp32/wifi/command", {"HTTP_DEVICE_ID": "x" * 500}),
    ],
)
def test_a_poll_with_a_malformed_device_id_is_refused_with_400(online_device, path, headers):
    client = APIClient(raise_request_exception=False)

    response = client.get(path, **headers)

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_device_id"
    assert "device id" in response.json()["detail"]
    assert Device.objects.count() == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/esp32/register", register_body(rssi=-61, uptime_ms=81234)),
        ("/esp32/confirm", confirm_body(rssi=-61, uptime_ms=81234)),
    ],
)
def test_unknown_extra_fields_are_ignored_and_logged_as_a_warning(
    api_client, online_device, path, body
):
    response = post_json(api_client, path, body)

    assert response.status_code == 200
    warning = CommunicationLog.objects.get(
        level=LogLevel.WARNING, message__startswith="ignored unknown fields"
    )
    assert "rssi" in warning.message
    assert "uptime_ms" in warning.message


# --- The hot path ---------------------------------------------------------------------------


def test_idle_poll_of_a_recently_seen_device_costs_at_most_two_queries(
    api_client, online_device, django_assert_max_num_queries
):
    with django_assert_max_num_queries(2):
        response = poll(api_client)

    assert response.content == b"null"


def test_idle_poll_of_a_recently_seen_device_writes_nothing(api_client, online_device):
    with CaptureQueriesContext(connection) as captured:
        poll(api_client)

    assert writes(captured.captured_queries) == []
    assert not CommunicationLog.objects.exists()


def test_last_seen_is_written_again_only_after_the_write_interval(
    api_client, online_device, settings
):
    settings.DEVICE_SEEN_WRITE_INTERVAL = 3
    recently = timezone.now() - timedelta(seconds=2)
    Device.objects.filter(pk=online_device.pk).update(last_seen=recently)

    with CaptureQueriesContext(connection) as captured:
        poll(api_client)

    assert writes(captured.captured_queries) == []
    assert Device.objects.get(pk=online_device.pk).last_seen == recently

    a_while_ago = timezone.now() - timedelta(seconds=4)
    Device.objects.filter(pk=online_device.pk).update(last_seen=a_while_ago)

    with CaptureQueriesContext(connection) as captured:
        poll(api_client)

    assert len(writes(captured.captured_queries)) == 1
    assert Device.objects.get(pk=online_device.pk).last_seen > a_while_ago


# --- A claim is never half-done (device-trust finding 3) ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_poll_that_fails_after_its_claim_leaves_the_vend_queued_for_the_next_poll(
    online_device, monkeypatch
):
    """Under PostgreSQL connection kills, polls committed their claim and then answered 503:
    the machine never saw those vends, and later confirmations settled the wrong ones. Here
    the database fails on the row that records the delivery, after the claim."""
    from django.db import OperationalError

    from devices import services

    txn = request_vend(device=online_device, slot_number=3)
    write = services._write_log_entry

    def failing(exchange):
        if exchange.direction == Direction.OUT:
            raise OperationalError("server closed the connection unexpectedly")
        return write(exchange)

    monkeypatch.setattr(services, "_write_log_entry", failing)
    client = APIClient()

    failed = poll(client)

    assert failed.status_code == 503
    assert Command.objects.get().state == CommandState.QUEUED
    assert Transaction.objects.get(pk=txn.pk).state == TransactionState.QUEUED
    monkeypatch.setattr(services, "_write_log_entry", write)
    delivered = poll(client)
    assert delivered.json()["transaction_id"] == str(txn.pk)
    assert confirm(client).json()["transaction_id"] == str(txn.pk)


def test_by_default_a_vend_whose_answer_was_lost_is_flagged_not_credited(api_client, online_device):
    """One vend at a time is the default: a machine handed its next vend never got the one
    still waiting, so the confirmation goes to the vend it really dispensed."""
    lost = request_vend(device=online_device, slot_number=3)
    poll(api_client)  # the answer never reached the machine
    dispensed = request_vend(device=online_device, slot_number=3)
    poll(api_client)

    assert confirm(api_client, slot=3).json()["transaction_id"] == str(dispensed.pk)
    assert Transaction.objects.get(pk=lost.pk).state == TransactionState.UNCONFIRMED
