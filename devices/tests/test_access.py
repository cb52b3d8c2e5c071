"""Device access: approval, the network allow-list (HTTP and UDP discovery), per-device
tokens, object-level checks between devices, and request size limits."""

import hashlib
import io
import json

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from devices.access import issue_device_token
from devices.approval import set_approved
from devices.choices import CommandState, Protocol, Transport
from devices.models import Command, CommunicationLog, Device
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
from transactions.commands import queue_command
from transactions.models import Transaction
from vending_site.http.limits import RequestTooLarge
from vending_site.http.parsers import SafeJSONParser

OTHER_ID = "ESP32_AAAAAAAAAAAA"


def stocked(device_id: str, **fields) -> Device:
    """A stocked machine; approved but bound to no address unless ``fields`` say so."""
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


def test_without_approval_required_a_new_device_is_approved(db, settings):
    settings.DEVICE_APPROVAL_REQUIRED = False

    assert APIClient().get(f"/esp32/commands/{OTHER_ID}").status_code == 200
    assert Device.objects.get(device_id=OTHER_ID).approved is True


STRANGER = {"REMOTE_ADDR": "127.0.0.2"}  # another host on the machines' network


def test_by_default_a_machine_that_registers_is_pending_without_slots_and_gets_idle_answers(
    db, staff_client
):
    client = APIClient()

    registered = post_json(client, "/esp32/register", register_body(device_id=OTHER_ID))
    polled = poll(client, OTHER_ID)
    refused = vend(staff_client, OTHER_ID)

    assert registered.status_code == polled.status_code == 200
    assert polled.content == b"null"
    device = Device.objects.get(device_id=OTHER_ID)
    assert (device.approved, device.admission) == (False, "awaiting approval")
    assert device.last_address == "127.0.0.1"
    assert not device.slots.exists()
    assert not device.is_active
    assert refused.status_code == 409
    assert refused.json()["code"] == "device_not_approved"


def test_pending_machines_are_capped_and_a_new_one_beyond_is_refused_without_a_write(db, settings):
    settings.DEVICE_PENDING_LIMIT = 3
    client = APIClient()
    for n in range(3):
        assert poll(client, f"ESP32_00000000000{n}").status_code == 200
    rows_before = (Device.objects.count(), Slot.objects.count(), CommunicationLog.objects.count())

    polled = poll(client, "ESP32_0000000000AA")
    registered = post_json(client, "/esp32/register", register_body(device_id="ESP32_0000000000AB"))

    assert polled.status_code == registered.status_code == 403
    assert polled.json()["code"] == "too_many_pending"
    assert "DEVICE_PENDING_LIMIT" in polled.json()["detail"]
    assert Device.objects.count() == rows_before[0]
    assert Slot.objects.count() == rows_before[1] == 0


def test_approval_binds_the_machine_to_its_address_and_gives_it_slots(db, staff_client):
    client = APIClient()
    post_json(client, "/esp32/register", register_body(device_id=OTHER_ID), **STRANGER)

    set_approved(devices=Device.objects.filter(device_id=OTHER_ID), approved=True)

    device = Device.objects.get(device_id=OTHER_ID)
    assert device.bound_address == "127.0.0.2"
    assert device.approved_at is not None
    assert list(device.slots.values_list("number", flat=True)) == [1, 2, 3, 4, 5]
    assert device.is_active


def test_a_bound_machine_is_refused_from_another_address_and_nothing_changes(db, staff_client):
    """Finding 1 of the device-trust review: anyone on the LAN took a queued vend with one
    GET and faked its outcome with one POST; a register shrank the machine's slots."""
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    queued_id = vend(staff_client, OTHER_ID).json()["id"]
    stranger = APIClient()

    stolen = poll(stranger, OTHER_ID, **STRANGER)
    assert poll(APIClient(), OTHER_ID).json()["transaction_id"] == queued_id  # the machine
    faked = post_json(
        stranger, "/esp32/confirm", confirm_body(device_id=OTHER_ID, slot=1), **STRANGER
    )
    failed = post_json(
        stranger,
        "/esp32/wifi/confirm",
        confirm_body(device_id=OTHER_ID, slot=1, success=False),
        **STRANGER,
    )
    shrunk = post_json(
        stranger,
        "/esp32/register",
        register_body(device_id=OTHER_ID, slots_available=1),
        **STRANGER,
    )

    assert {r.status_code for r in (stolen, faked, failed, shrunk)} == {403}
    assert stolen.json()["code"] == "device_bound_elsewhere"
    assert Transaction.objects.get(pk=queued_id).state == "sent"  # only the machine settles it
    device.refresh_from_db()
    assert (device.slot_count, device.bound_address) == (5, "127.0.0.1")
    assert (device.moved_to, device.admission) == (
        "127.0.0.2",
        "moved to 127.0.0.2, awaiting approval",
    )
    assert confirm(APIClient(), slot=1, device_id=OTHER_ID).json()["state"] == "succeeded"


def test_the_address_staff_see_is_kept_while_it_keeps_asking(db):
    """Approving binds to the address shown; a second stranger cannot swap it underneath."""
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    poll(APIClient(), OTHER_ID, REMOTE_ADDR="127.0.0.5")  # the machine's new lease

    for _ in range(5):
        poll(APIClient(), OTHER_ID, **STRANGER)

    assert Device.objects.get(pk=device.pk).moved_to == "127.0.0.5"


def test_approving_an_address_that_changed_meanwhile_is_409(db, staff_client):
    post_json(APIClient(), "/esp32/register", register_body(device_id=OTHER_ID), **STRANGER)

    response = staff_client.post(
        f"/api/v1/devices/{OTHER_ID}/admission",
        {"action": "approve", "address": "127.0.0.9"},
        format="json",
    )

    assert response.status_code == 409
    assert response.json()["code"] == "address_changed"
    assert Device.objects.get(device_id=OTHER_ID).approved is False


def test_a_revoked_machine_stays_bound_so_nobody_else_settles_its_vend(db, staff_client):
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    txn_id = vend(staff_client, OTHER_ID).json()["id"]
    poll(APIClient(), OTHER_ID)  # delivered to the machine

    set_approved(devices=Device.objects.filter(pk=device.pk), approved=False)
    faked = post_json(
        APIClient(), "/esp32/confirm", confirm_body(device_id=OTHER_ID, slot=1), **STRANGER
    )

    assert faked.status_code == 403
    assert Transaction.objects.get(pk=txn_id).state == "sent"
    assert Device.objects.get(pk=device.pk).bound_address == "127.0.0.1"


def test_revoked_machines_do_not_fill_the_pending_list(db, settings):
    settings.DEVICE_PENDING_LIMIT = 1
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    set_approved(devices=Device.objects.filter(pk=device.pk), approved=True)  # no-op
    Device.objects.filter(pk=device.pk).update(approved=False, approved_at=timezone.now())

    assert poll(APIClient(), "ESP32_0000000000A1").status_code == 200


def test_a_stranger_does_not_keep_an_absent_machine_online(db):
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    Device.objects.filter(pk=device.pk).update(last_seen=None)

    poll(APIClient(), OTHER_ID, **STRANGER)

    assert Device.objects.get(pk=device.pk).last_seen is None


def test_staff_accept_a_move_and_the_machine_is_served_from_its_new_address(db, client):
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    poll(APIClient(), OTHER_ID, **STRANGER)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    client.post(
        "/admin/devices/device/", {"action": "accept_move", "_selected_action": [device.pk]}
    )

    device.refresh_from_db()
    assert (device.bound_address, device.moved_to) == ("127.0.0.2", None)
    assert poll(APIClient(), OTHER_ID, **STRANGER).status_code == 200
    assert poll(APIClient(), OTHER_ID).status_code == 403


def test_an_approved_machine_with_no_address_is_bound_by_staff_not_by_who_speaks_first(
    db, staff_client
):
    """A machine staff added by hand has no address: the first stranger to speak must not
    become it (it is refused, and the address it asks from awaits staff)."""
    device = stocked(OTHER_ID)
    vend(staff_client, OTHER_ID)

    first = poll(APIClient(), OTHER_ID, **STRANGER)

    assert first.status_code == 403
    assert Command.objects.get().state == CommandState.QUEUED
    device.refresh_from_db()
    assert device.bound_address is None
    assert device.admission == "moved to 127.0.0.2, awaiting approval"


def test_with_binding_off_any_address_acts_for_an_approved_machine(db, settings, staff_client):
    settings.DEVICE_ADDRESS_BINDING = False
    stocked(OTHER_ID, bound_address="127.0.0.1")
    vend(staff_client, OTHER_ID)

    assert poll(APIClient(), OTHER_ID, **STRANGER).json()["slot"] == 1


def test_approving_an_approved_machine_again_does_not_bind_it_to_a_stranger(db):
    device = stocked(OTHER_ID, bound_address="127.0.0.1")
    poll(APIClient(), OTHER_ID, **STRANGER)  # marks it moved

    set_approved(devices=Device.objects.filter(pk=device.pk), approved=True)

    assert Device.objects.get(pk=device.pk).bound_address == "127.0.0.1"


def test_never_approved_machines_are_pruned_and_approved_ones_kept(db, settings):
    from datetime import timedelta

    from devices.maintenance import prune_pending_devices

    old = timezone.now() - timedelta(hours=settings.DEVICE_PENDING_PRUNE_HOURS + 1)
    Device.objects.create(
        device_id="ESP32_00000000000A", approved=False, registered_at=old, last_seen=old
    )
    Device.objects.create(device_id="ESP32_00000000000B", approved=False, last_seen=timezone.now())
    Device.objects.create(device_id="ESP32_00000000000C", registered_at=old, last_seen=old)

    assert prune_pending_devices() == 1

    assert sorted(Device.objects.values_list("device_id", flat=True)) == [
        "ESP32_00000000000B",
        "ESP32_00000000000C",
    ]


# --- Browsers --------------------------------------------------------------------------------


BROWSER_MARKS = [
    {"HTTP_ORIGIN": "http://evil.example"},
    {"HTTP_SEC_FETCH_SITE": "cross-site"},
    {"HTTP_SEC_FETCH_SITE": "same-site"},
    {"HTTP_COOKIE": "sessionid=abc"},
]


BROWSER_MARKS.append({"HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0"})


@pytest.mark.parametrize("marks", BROWSER_MARKS, ids=lambda marks: next(iter(marks)))
@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("get", f"/esp32/commands/{OTHER_ID}", {}),
        ("get", "/esp32/wifi/command", {"HTTP_DEVICE_ID": OTHER_ID}),
        ("post", "/esp32/register", {}),
        ("post", "/esp32/confirm", {}),
        ("post", "/esp32/wifi/confirm", {}),
    ],
)
def test_what_only_a_browser_sends_is_refused_before_anything_happens(
    db, staff_client, marks, method, path, extra
):
    stocked(OTHER_ID, bound_address="127.0.0.1")
    vend(staff_client, OTHER_ID)
    body = confirm_body(device_id=OTHER_ID, slot=1) if "confirm" in path else register_body()
    logged = CommunicationLog.objects.count()
    client = APIClient()

    if method == "get":
        response = client.get(path, **extra, **marks)
    else:
        response = post_json(client, path, body, **marks)

    assert response.status_code == 403
    assert response.json()["code"] == "browser_request_refused"
    assert Command.objects.get().state == CommandState.QUEUED
    assert CommunicationLog.objects.count() <= logged + 1  # the refusal, within its budget


def test_a_flood_of_anonymous_confirmations_writes_a_bounded_log(db, settings):
    """Finding 5: 2,000 confirmations from one address in 30 s wrote 6,000 log rows."""
    settings.DEVICE_LOG_RATE = 20
    client = APIClient()

    answers = {
        post_json(client, "/esp32/confirm", confirm_body(device_id=f"ESP32_{n:012X}")).status_code
        for n in range(200)
    }

    assert answers == {200}
    # At most the per-address budget; a window change mid-test adds one more budget.
    assert CommunicationLog.objects.count() <= 2 * 20 + 2


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_form_encoded_body_is_refused(db, content_type):
    response = APIClient().generic(
        "POST", "/esp32/register", json.dumps(register_body()), content_type=content_type
    )

    assert response.status_code == 403
    assert "not the firmware's JSON" in response.json()["detail"]
    assert not Device.objects.exists()


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
    stocked(OTHER_ID, approved=False, moved_to="127.0.0.1")

    set_approved(devices=Device.objects.filter(device_id=OTHER_ID), approved=True)
    response = vend(staff_client, OTHER_ID)

    assert response.status_code == 202
    assert poll(APIClient(), OTHER_ID).json()["slot"] == 1


def test_revoking_expires_queued_commands_so_nothing_is_delivered(db, settings, staff_client):
    settings.DEVICE_APPROVAL_REQUIRED = True
    device = stocked(OTHER_ID, approved=True, bound_address="127.0.0.1")
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
    stocked(OTHER_ID, bound_address="127.0.0.1")
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


# --- Admission over REST -------------------------------------------------------------------


def test_staff_approve_a_pending_machine_over_rest_and_it_is_bound_and_gets_slots(db, staff_client):
    post_json(APIClient(), "/esp32/register", register_body(device_id=OTHER_ID), **STRANGER)

    response = staff_client.post(
        f"/api/v1/devices/{OTHER_ID}/admission", {"action": "approve"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["admission"] == "approved"
    assert response.json()["bound_address"] == "127.0.0.2"
    assert Device.objects.get(device_id=OTHER_ID).slots.count() == 5


def test_accepting_a_move_that_nobody_asked_for_is_409(db, staff_client):
    stocked(OTHER_ID, bound_address="127.0.0.1")

    response = staff_client.post(
        f"/api/v1/devices/{OTHER_ID}/admission", {"action": "accept_move"}, format="json"
    )

    assert response.status_code == 409
    assert "nothing to accept" in response.json()["detail"]


def test_admission_is_for_staff_only(db, client_for):
    from django.contrib.auth.models import Group

    from vending_site.auth.permissions import VEND_CLIENT_GROUP

    stocked(OTHER_ID, approved=False)
    kiosk = UserFactory()
    kiosk.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])

    response = client_for(kiosk).post(
        f"/api/v1/devices/{OTHER_ID}/admission", {"action": "approve"}, format="json"
    )

    assert response.status_code == 403
    assert Device.objects.get(device_id=OTHER_ID).approved is False


def test_re_registering_again_and_again_does_not_flood_live_pages(db):
    """A stranger's own pending machine registered over and over: one live event, not one
    per request (each is kept for LIVE_EVENT_RETENTION)."""
    from vending_site.models import LiveEvent

    client = APIClient()
    for _ in range(20):
        post_json(client, "/esp32/register", register_body(device_id=OTHER_ID), **STRANGER)

    assert LiveEvent.objects.filter(kind="device").count() == 1


def test_approving_in_the_admin_reaches_live_pages(db, client):
    """Approval publishes where it happens (the service), not in one caller of it."""
    from vending_site.models import LiveEvent

    device = stocked(OTHER_ID, approved=False, moved_to="127.0.0.1")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    client.post("/admin/devices/device/", {"action": "approve", "_selected_action": [device.pk]})

    event = LiveEvent.objects.filter(kind="device", payload__device_id=OTHER_ID).last()
    assert event is not None and event.payload["admission"] == "approved"
