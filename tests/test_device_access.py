"""Device access: approval, the network allow-list (HTTP and UDP discovery), per-device
tokens, object-level checks between devices, and request size limits."""

import hashlib
import io

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from devices.access import issue_device_token, set_approved
from devices.choices import CommandState, Protocol, Transport
from devices.models import Command, CommunicationLog, Device
from devices.services import queue_command
from devices.tests.helpers import (
    DEVICE_ID,
    MAC,
    confirm,
    confirm_body,
    poll,
    post_json,
    register_body,
)
from devices.tests.test_discovery import Listener, ask
from inventory.models import Slot
from tests.factories import ProductFactory, SlotFactory, UserFactory
from transactions.models import Transaction
from vending_site.limits import RequestTooLarge
from vending_site.parsers import SafeJSONParser

OTHER_ID = "ESP32_AAAAAAAAAAAA"


def stocked(device_id: str, **fields) -> Device:
    device = Device.objects.create(device_id=device_id, last_seen=timezone.now(), **fields)
    for number in (1, 2):
        SlotFactory(device=device, number=number, product=ProductFactory(), quantity=3)
    return device


@pytest.fixture
def staff_client(db, client_for):
    return client_for(UserFactory(is_staff=True, is_superuser=True))


def vend(client, device_id: str, slot: int = 1):
    return client.post(f"/api/v1/vend/{slot}", {"device_id": device_id}, format="json")


# --- Approval --------------------------------------------------------------------------------


def test_without_approval_required_a_new_device_is_approved(db):
    assert APIClient().get(f"/esp32/commands/{OTHER_ID}").status_code == 200
    assert Device.objects.get(device_id=OTHER_ID).approved is True


def test_a_new_device_registers_and_polls_but_is_not_approved(db, settings):
    settings.DEVICE_APPROVAL_REQUIRED = True
    client = APIClient()

    registered = post_json(client, "/esp32/register", register_body(device_id=OTHER_ID))
    polled = poll(client, OTHER_ID)

    assert registered.status_code == polled.status_code == 200
    assert polled.content == b"null"
    device = Device.objects.get(device_id=OTHER_ID)
    assert device.approved is False
    assert device.last_seen is not None


def test_a_vend_for_an_unapproved_device_is_409_and_reserves_nothing(db, settings, staff_client):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=False)

    response = vend(staff_client, OTHER_ID)

    assert response.status_code == 409
    assert response.json()["code"] == "device_not_approved"
    assert "waiting for staff approval" in response.json()["detail"]
    assert not Transaction.objects.exists()
    assert not Command.objects.exists()
    assert Slot.objects.get(device=device, number=1).quantity == 3


def test_after_approval_the_device_gets_the_vend(db, settings, staff_client):
    settings.DEVICE_APPROVAL_REQUIRED = True
    stocked(OTHER_ID, approved=False)

    set_approved(devices=Device.objects.filter(device_id=OTHER_ID), approved=True)
    response = vend(staff_client, OTHER_ID)

    assert response.status_code == 202
    assert poll(APIClient(), OTHER_ID).json()["slot"] == 1


def test_revoking_expires_queued_commands_so_nothing_is_delivered(db, settings, staff_client):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=True)
    txn_id = vend(staff_client, OTHER_ID).json()["id"]

    set_approved(devices=Device.objects.filter(pk=device.pk), approved=False)

    assert poll(APIClient(), OTHER_ID).content == b"null"
    assert Transaction.objects.get(pk=txn_id).state == "expired"
    assert Slot.objects.get(device=device, number=1).quantity == 3  # the unit came back


def test_a_usb_serial_device_needs_no_approval(db, settings):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=False, transport=Transport.SERIAL, protocol=Protocol.SERIAL)

    command = queue_command(device=device, kind="STATUS")

    assert command.state == CommandState.QUEUED


def test_the_admin_actions_approve_and_revoke(db, settings, client):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=False)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = "/admin/devices/device/"

    client.post(url, {"action": "approve", "_selected_action": [device.pk]})
    approved = Device.objects.get(pk=device.pk).approved
    client.post(url, {"action": "revoke_approval", "_selected_action": [device.pk]})

    assert approved is True
    assert Device.objects.get(pk=device.pk).approved is False


# --- Network allow-list ----------------------------------------------------------------------


@pytest.fixture
def lan_only(settings):
    settings.DEVICE_ALLOWED_NETWORKS = ["192.168.1.0/24"]


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("get", f"/esp32/commands/{OTHER_ID}", {}),
        ("get", "/esp32/wifi/command", {"HTTP_DEVICE_ID": OTHER_ID}),
        ("post", "/esp32/register", {}),
        ("post", "/esp32/wifi/confirm", {}),
    ],
)
def test_device_endpoints_refuse_other_networks_and_record_nothing(
    db, lan_only, method, path, extra
):
    client = APIClient()
    body = register_body(device_id=OTHER_ID)
    if method == "get":
        response = client.get(path, REMOTE_ADDR="10.0.0.5", **extra)
    else:
        response = post_json(client, path, body, REMOTE_ADDR="10.0.0.5")

    assert response.status_code == 403
    assert response.json() == {
        "detail": "Device endpoints are not open to 10.0.0.5.",
        "code": "network_not_allowed",
    }
    assert not Device.objects.exists()
    assert not CommunicationLog.objects.exists()


def test_a_device_in_an_allowed_network_is_served(db, lan_only):
    response = APIClient().get(f"/esp32/commands/{OTHER_ID}", REMOTE_ADDR="192.168.1.50")

    assert response.status_code == 200
    assert Device.objects.filter(device_id=OTHER_ID).exists()


def test_a_queued_vend_is_not_claimed_from_outside(online_device, lan_only, staff_client):
    txn_id = vend(staff_client, DEVICE_ID).json()["id"]

    refused = APIClient().get(f"/esp32/commands/{DEVICE_ID}", REMOTE_ADDR="10.0.0.5")

    assert refused.status_code == 403
    assert Transaction.objects.get(pk=txn_id).state == "queued"


def test_forwarded_for_counts_only_through_a_trusted_proxy(db, lan_only):
    via_nginx = APIClient().get(
        f"/esp32/commands/{OTHER_ID}", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="192.168.1.9"
    )
    forged = APIClient().get(
        f"/esp32/commands/{OTHER_ID}", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="192.168.1.9"
    )

    assert via_nginx.status_code == 200
    assert forged.status_code == 403


def test_the_allow_list_leaves_rest_and_status_alone(online_device, lan_only, client_for):
    assert APIClient().get("/status", REMOTE_ADDR="10.0.0.5").status_code == 200
    response = client_for(UserFactory()).get("/esp32/devices/list", REMOTE_ADDR="10.0.0.5")
    assert response.status_code == 200


def test_discovery_does_not_answer_senders_outside_the_allowed_networks(settings):
    settings.DEVICE_ALLOWED_NETWORKS = ["192.168.1.0/24"]
    with Listener() as listener:
        assert ask(listener.address, b"ESP32_DISCOVERY_REQUEST", timeout=0.3) is None
    assert listener.protocol.answered == 0  # the counters are there once it has stopped
    assert listener.protocol.dropped == 1


def test_discovery_answers_senders_inside_the_allowed_networks(settings):
    settings.DEVICE_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with Listener() as listener:
        assert ask(listener.address, b"ESP32_DISCOVERY_REQUEST") == b"FLASK_SERVER:127.0.0.1"


# --- Tokens ----------------------------------------------------------------------------------


@pytest.fixture
def tokens_required(settings):
    settings.DEVICE_TOKEN_REQUIRED = True


def test_an_issued_token_is_random_and_stored_only_as_its_sha256(online_device):
    token = issue_device_token(device=online_device)
    other = issue_device_token(device=online_device)

    stored = Device.objects.get(pk=online_device.pk).token_hash
    assert len(token) >= 43  # 32 random bytes, base64url
    assert token != other
    assert stored == hashlib.sha256(other.encode()).hexdigest()
    assert token not in stored and other not in stored


@pytest.mark.parametrize(
    ("header", "code"),
    [({}, "device_token_missing"), ({"HTTP_X_DEVICE_TOKEN": "guess"}, "device_token_invalid")],
)
def test_a_poll_without_the_right_token_is_refused(online_device, tokens_required, header, code):
    issue_device_token(device=online_device)

    response = APIClient().get(f"/esp32/commands/{DEVICE_ID}", **header)

    assert response.status_code == 403
    assert response.json()["code"] == code


def test_the_right_token_is_served_on_every_endpoint(online_device, tokens_required):
    token = issue_device_token(device=online_device)
    client = APIClient()
    client.credentials(HTTP_X_DEVICE_TOKEN=token)

    assert poll(client).status_code == 200
    assert client.get("/esp32/wifi/command", HTTP_DEVICE_ID=MAC).status_code == 200
    assert post_json(client, "/esp32/register", register_body()).status_code == 200
    assert confirm(client).status_code == 200


def test_a_token_does_not_open_another_device(online_device, tokens_required):
    stocked(OTHER_ID)
    token = issue_device_token(device=online_device)
    issue_device_token(device=Device.objects.get(device_id=OTHER_ID))

    response = APIClient().get(f"/esp32/commands/{OTHER_ID}", HTTP_X_DEVICE_TOKEN=token)

    assert response.status_code == 403


def test_a_device_without_a_token_cannot_poll_when_tokens_are_required(db, tokens_required):
    response = APIClient().get(f"/esp32/commands/{OTHER_ID}", HTTP_X_DEVICE_TOKEN="anything")

    assert response.status_code == 403
    assert not Device.objects.exists()


def test_issue_device_token_command_prints_a_working_token(online_device, capsys):
    call_command("issue_device_token", MAC)
    token = capsys.readouterr().out.strip()

    stored = Device.objects.get(pk=online_device.pk).token_hash
    assert stored == hashlib.sha256(token.encode()).hexdigest()


# --- Object-level: a device reaches only its own commands ------------------------------------


def test_a_device_cannot_fetch_or_confirm_another_devices_command(online_device, staff_client):
    stocked(OTHER_ID)
    txn_id = vend(staff_client, DEVICE_ID, slot=3).json()["id"]
    intruder = APIClient()

    fetched = poll(intruder, OTHER_ID)
    assert fetched.content == b"null"
    assert Transaction.objects.get(pk=txn_id).state == "queued"

    assert poll(APIClient()).json()["slot"] == 3  # the owner gets it
    confirmed = post_json(
        intruder, "/esp32/confirm", {"device_id": OTHER_ID, "slot": 3, "success": True}
    )
    assert confirmed.json()["status"] == "ignored"
    assert Transaction.objects.get(pk=txn_id).state == "sent"

    assert confirm(APIClient(), slot=3).json()["status"] == "ok"
    assert Transaction.objects.get(pk=txn_id).state == "succeeded"


# --- Request size ----------------------------------------------------------------------------


def test_an_oversized_rest_body_is_413_with_a_message(online_device, settings, client_for):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = client_for(UserFactory()).post(
        "/api/v1/vend/1", {"device_id": DEVICE_ID, "pad": "x" * 2000}, format="json"
    )

    assert response.status_code == 413
    assert response.json() == {
        "detail": "The request body is too large: at most 1024 bytes are accepted.",
        "code": "request_too_large",
    }
    assert not Transaction.objects.exists()


def test_an_oversized_device_body_is_413_and_not_logged(online_device, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = post_json(APIClient(), "/esp32/confirm", {"device_id": MAC, "pad": "x" * 2000})

    assert response.status_code == 413
    assert not CommunicationLog.objects.exists()


def test_the_default_limit_is_small_and_explicit(settings):
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 64 * 1024


def test_the_parser_stops_reading_at_the_limit_whatever_the_headers_said(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = io.BytesIO(b'{"a": "' + b"x" * 500 + b'"}')

    with pytest.raises(RequestTooLarge):
        SafeJSONParser().parse(body, "application/json", {})


@pytest.mark.parametrize("length", ["abc", "-5"])
def test_a_content_length_that_is_not_a_byte_count_is_400_not_500(db, length):
    response = APIClient().generic(
        "POST", "/esp32/confirm", b"{}", content_type="application/json", CONTENT_LENGTH=length
    )

    assert response.status_code == 400


def test_a_device_registering_through_the_proxy_is_recorded_with_its_own_address(db):
    response = post_json(
        APIClient(),
        "/esp32/register",
        {"device_id": OTHER_ID, "firmware_version": "1.0"},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="192.168.1.77",
    )

    assert response.status_code == 200, response.content
    assert Device.objects.get(device_id=OTHER_ID).ip_address == "192.168.1.77"


@pytest.mark.parametrize(
    "peer, forwarded, recorded",
    [
        ("127.0.0.1", "unknown", "127.0.0.1"),  # a garbled chain: only the connection counts
        ("127.0.0.1", "192.168.1.77:5555", "127.0.0.1"),
        ("10.0.0.5", "192.168.1.77", "10.0.0.5"),  # not through a trusted proxy
    ],
)
def test_a_forwarded_for_that_cannot_be_believed_records_the_peer(db, peer, forwarded, recorded):
    response = APIClient().get(
        f"/esp32/commands/{OTHER_ID}", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded
    )

    assert response.status_code == 200, response.content
    assert Device.objects.get(device_id=OTHER_ID).ip_address == recorded


@pytest.mark.parametrize("path", ["/esp32/confirm", "/esp32/register"])
def test_a_token_cannot_act_on_another_device_named_in_the_body(
    online_device, tokens_required, path
):
    stocked(OTHER_ID)
    token = issue_device_token(device=online_device)
    issue_device_token(device=Device.objects.get(device_id=OTHER_ID))
    body = confirm_body(device_id=OTHER_ID, success=False)
    if path == "/esp32/register":
        body = register_body(device_id=OTHER_ID)

    response = post_json(
        APIClient(), path, body, HTTP_X_DEVICE_TOKEN=token, HTTP_DEVICE_ID=DEVICE_ID
    )

    assert response.status_code == 403, response.content
    assert "more than one device" in response.json()["detail"]


def test_revoking_through_a_list_filtered_on_approval_still_expires_queued_vends(
    db, settings, staff_client
):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=True)
    txn_id = vend(staff_client, OTHER_ID).json()["id"]

    # The admin's changelist with "approved: yes" selected passes a queryset like this one.
    set_approved(devices=Device.objects.filter(approved=True, pk=device.pk), approved=False)

    assert Transaction.objects.get(pk=txn_id).state == "expired"
    assert poll(APIClient(), OTHER_ID).content == b"null"


def test_a_command_queued_before_a_revoke_is_not_handed_to_the_revoked_device(
    db, settings, staff_client
):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=True)
    vend(staff_client, OTHER_ID)
    Device.objects.filter(pk=device.pk).update(approved=False)  # a revoke racing the vend

    assert poll(APIClient(), OTHER_ID).content == b"null"
    assert Command.objects.get(device=device).state == CommandState.QUEUED
