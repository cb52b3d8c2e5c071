"""The device admin: pages, the slot inline's path through the ledger, and the actions."""

import pytest
from django import forms
from django.contrib.messages import get_messages
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from devices.choices import CommandKind, Direction, Protocol, Transport
from devices.models import Command, CommunicationLog, Device
from devices.services import log_exchange
from inventory.choices import MovementReason
from inventory.models import Slot, StockMovement
from inventory.services import move_stock
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from transactions.commands import queue_command
from vending_site.auth.roles import TECHNICIAN

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def form_data(form) -> dict:
    """What a browser would post for ``form`` as it was rendered."""
    data = {}
    for bound in form:
        value = bound.value()
        if isinstance(bound.field.widget, forms.CheckboxInput):
            if value:
                data[bound.html_name] = "on"
        elif value is not None:
            data[bound.html_name] = value
        if bound.field.show_hidden_initial:
            data[bound.html_initial_name] = bound.initial
    return data


def change_page_data(response) -> dict:
    """The whole change form (main form and every inline) as rendered in ``response``."""
    data = form_data(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        data.update(form_data(inline.formset.management_form))
        for inline_form in inline.formset.forms:
            data.update(form_data(inline_form))
    return data


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def change_url(device: Device) -> str:
    return reverse("admin:devices_device_change", args=[device.pk])


def ledger_sum(slot: Slot) -> int:
    return StockMovement.objects.filter(slot=slot).aggregate(total=Sum("delta"))["total"] or 0


def empty_device(**kwargs) -> Device:
    """A device whose slots hold nothing, so its (empty) ledger explains every quantity."""
    device = DeviceFactory(slot_count=2, **kwargs)
    for number in (1, 2):
        SlotFactory(device=device, number=number, quantity=0, capacity=10)
    return device


def slot_field(number: int, name: str) -> str:
    return f"slots-{number - 1}-{name}"


def test_every_device_admin_page_loads_for_staff(staff_client, online_device):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=1)
    entry = log_exchange(
        direction=Direction.IN, transport=Transport.WIFI, device=online_device, message="hello"
    )
    urls = [
        reverse("admin:devices_device_changelist"),
        reverse("admin:devices_device_add"),
        change_url(online_device),
        reverse("admin:devices_command_changelist"),
        reverse("admin:devices_command_change", args=[command.pk]),
        reverse("admin:devices_communicationlog_changelist"),
        reverse("admin:devices_communicationlog_change", args=[entry.pk]),
    ]
    for url in urls:
        assert staff_client.get(url).status_code == 200, url


def test_device_filters_and_search_pages_load(staff_client, online_device):
    url = reverse("admin:devices_device_changelist")
    for query in ["online=yes", "online=no", "transport=wifi", "is_active__exact=1", "q=6CC8"]:
        response = staff_client.get(f"{url}?{query}")
        assert response.status_code == 200, query


def test_the_device_list_shows_online_state_as_an_icon_and_the_address(staff_client):
    DeviceFactory(
        device_id="ESP32_AAAAAAAAAAAA",
        last_seen=timezone.now(),
        ip_address="10.0.0.9",  # what it said; the list shows what the server saw
        last_address="10.0.0.7",
    )
    DeviceFactory(
        device_id="ESP32_BBBBBBBBBBBB",
        last_seen=None,
        serial_port="/dev/ttyUSB0",
        last_address=None,
    )
    response = staff_client.get(reverse("admin:devices_device_changelist"))
    body = response.content.decode()
    assert 'alt="True"' in body  # the online one
    assert 'alt="False"' in body  # the offline one (and inactive flags)
    assert "10.0.0.7" in body
    assert "/dev/ttyUSB0" in body


def test_the_online_filter_keeps_only_devices_seen_recently(staff_client):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now())
    DeviceFactory(device_id="ESP32_BBBBBBBBBBBB", last_seen=None)
    response = staff_client.get(reverse("admin:devices_device_changelist") + "?online=yes")
    shown = [device.device_id for device in response.context["cl"].result_list]
    assert shown == ["ESP32_AAAAAAAAAAAA"]


def test_the_slot_inline_marks_low_and_empty_slots(staff_client, online_device):
    Slot.objects.filter(device=online_device, number=1).update(quantity=0)
    Slot.objects.filter(device=online_device, number=2).update(quantity=1)
    body = staff_client.get(change_url(online_device)).content.decode()
    assert ">empty<" in body
    assert ">low<" in body
    assert ">ok<" in body
    assert 'name="initial-slots-0-quantity"' in body  # what staff saw, to detect their edits


def test_raising_quantity_in_the_device_inline_is_recorded_as_a_restock(staff_client, staff):
    device = empty_device()
    data = change_page_data(staff_client.get(change_url(device)))
    data[slot_field(1, "quantity")] = 7

    response = staff_client.post(change_url(device), data)

    assert response.status_code == 302
    slot = Slot.objects.get(device=device, number=1)
    assert slot.quantity == 7
    movement = StockMovement.objects.get(slot=slot)
    assert movement.reason == MovementReason.RESTOCK  # a fill, as POST .../restock records one
    assert movement.delta == 7
    assert movement.user == staff
    assert ledger_sum(slot) == slot.quantity
    assert not StockMovement.objects.filter(slot__number=2).exists()


def test_a_technician_sees_inline_quantities_read_only_and_records_no_restock(client):
    # A raised quantity is a restock ledger row in their name; a Technician may not restock.
    client.force_login(staff_with_role(TECHNICIAN))
    device = empty_device()
    page = client.get(change_url(device))
    data = change_page_data(page)
    data[slot_field(1, "quantity")] = 9
    data[f"initial-{slot_field(1, 'quantity')}"] = 0
    data[slot_field(1, "capacity")] = 12

    response = client.post(change_url(device), data)

    assert 'name="slots-0-quantity"' not in page.content.decode()
    assert response.status_code == 302
    slot = Slot.objects.get(device=device, number=1)
    assert (slot.quantity, slot.capacity) == (0, 12)  # the other settings remain theirs
    assert not StockMovement.objects.filter(slot__device=device).exists()


def test_lowering_quantity_and_capacity_together_goes_through_the_ledger(staff_client, staff):
    device = empty_device()
    data = change_page_data(staff_client.get(change_url(device)))
    data[slot_field(1, "quantity")] = 8
    staff_client.post(change_url(device), data)

    data = change_page_data(staff_client.get(change_url(device)))
    data[slot_field(1, "quantity")] = 3
    data[slot_field(1, "capacity")] = 4
    response = staff_client.post(change_url(device), data)

    assert response.status_code == 302
    slot = Slot.objects.get(device=device, number=1)
    assert (slot.quantity, slot.capacity) == (3, 4)
    assert list(slot.movements.order_by("id").values_list("delta", flat=True)) == [8, -5]
    assert ledger_sum(slot) == slot.quantity


def test_raising_capacity_and_quantity_together_goes_through_the_ledger(staff_client):
    device = empty_device()
    data = change_page_data(staff_client.get(change_url(device)))
    data[slot_field(1, "quantity")] = 15
    data[slot_field(1, "capacity")] = 20

    response = staff_client.post(change_url(device), data)

    assert response.status_code == 302
    slot = Slot.objects.get(device=device, number=1)
    assert (slot.quantity, slot.capacity) == (15, 20)
    assert ledger_sum(slot) == 15


def test_a_quantity_above_capacity_is_refused_with_a_clear_message(staff_client):
    device = empty_device()
    data = change_page_data(staff_client.get(change_url(device)))
    data[slot_field(1, "quantity")] = 12

    response = staff_client.post(change_url(device), data)

    assert response.status_code == 200
    assert "The quantity (12) cannot exceed the slot&#x27;s capacity (10)." in (
        response.content.decode()
    )
    assert Slot.objects.get(device=device, number=1).quantity == 0
    assert not StockMovement.objects.exists()


def test_editing_other_slot_fields_keeps_a_vend_made_while_the_form_was_open(staff_client):
    device = empty_device()
    slot = Slot.objects.get(device=device, number=1)
    move_stock(slot=slot, delta=6, reason=MovementReason.RESTOCK)
    data = change_page_data(staff_client.get(change_url(device)))
    move_stock(slot=slot, delta=-1, reason=MovementReason.VEND)  # the page still shows 6
    data[slot_field(1, "low_stock_threshold")] = 4

    response = staff_client.post(change_url(device), data)

    assert response.status_code == 302
    slot.refresh_from_db()
    assert (slot.quantity, slot.low_stock_threshold) == (5, 4)
    assert not slot.movements.filter(reason=MovementReason.ADJUSTMENT).exists()
    assert ledger_sum(slot) == slot.quantity


def test_a_capacity_below_what_the_slot_holds_is_refused(staff_client):
    device = empty_device()
    slot = Slot.objects.get(device=device, number=1)
    move_stock(slot=slot, delta=6, reason=MovementReason.RESTOCK)
    data = change_page_data(staff_client.get(change_url(device)))
    data[slot_field(1, "capacity")] = 5

    response = staff_client.post(change_url(device), data)

    assert response.status_code == 200
    assert "The slot holds 6 units; the capacity cannot be less than that." in (
        response.content.decode()
    )
    slot.refresh_from_db()
    assert slot.capacity == 10


def test_a_slot_added_in_the_inline_is_filled_through_the_ledger(staff_client, staff):
    device = DeviceFactory(slot_count=2)
    SlotFactory(device=device, number=1, quantity=0)
    product = ProductFactory()
    data = change_page_data(staff_client.get(change_url(device)))
    data.update(
        {
            "slots-TOTAL_FORMS": 2,
            slot_field(2, "device"): device.pk,
            slot_field(2, "number"): 2,
            slot_field(2, "product"): product.pk,
            slot_field(2, "quantity"): 4,
            slot_field(2, "capacity"): 8,
            slot_field(2, "low_stock_threshold"): 1,
            slot_field(2, "enabled"): "on",
        }
    )

    response = staff_client.post(change_url(device), data)

    assert response.status_code == 302
    slot = Slot.objects.get(device=device, number=2)
    assert (slot.quantity, slot.capacity, slot.product) == (4, 8, product)
    movement = slot.movements.get()
    assert (movement.reason, movement.delta, movement.user) == ("restock", 4, staff)


def test_adding_a_device_stores_the_canonical_id_and_creates_its_slots(staff_client):
    response = staff_client.post(
        reverse("admin:devices_device_add"),
        {
            "device_id": "6c:c8:40:4f:e0:3d",
            "name": "Lobby",
            "transport": Transport.SERIAL,
            "protocol": Protocol.SERIAL,
            "slot_count": 3,
            "slots-TOTAL_FORMS": 0,
            "slots-INITIAL_FORMS": 0,
        },
    )

    assert response.status_code == 302
    device = Device.objects.get(name="Lobby")
    assert device.device_id == "ESP32_6CC8404FE03D"
    assert device.mac_address == "6C:C8:40:4F:E0:3D"
    assert list(device.slots.values_list("number", "quantity")) == [(1, 0), (2, 0), (3, 0)]


def test_make_active_device_action_switches_the_active_device(staff_client, online_device):
    other = DeviceFactory(device_id="ESP32_AAAAAAAAAAAA")

    response = staff_client.post(
        reverse("admin:devices_device_changelist"),
        {"action": "make_active", "_selected_action": [other.pk]},
    )

    assert response.status_code == 302
    assert list(Device.objects.filter(is_active=True)) == [other]
    assert messages_of(response) == ["ESP32_AAAAAAAAAAAA is now the active device."]


def test_make_active_device_action_needs_exactly_one_device(staff_client, online_device):
    other = DeviceFactory(device_id="ESP32_AAAAAAAAAAAA")

    response = staff_client.post(
        reverse("admin:devices_device_changelist"),
        {"action": "make_active", "_selected_action": [other.pk, online_device.pk]},
    )

    assert list(Device.objects.filter(is_active=True)) == [online_device]
    assert messages_of(response) == ["Select exactly one device to make it the active one."]


def test_queueing_status_on_a_v2_1_device_shows_an_error_and_creates_no_command(
    staff_client, online_device
):
    response = staff_client.post(
        reverse("admin:devices_device_changelist"),
        {"action": "queue_status", "_selected_action": [online_device.pk]},
        follow=True,
    )

    assert response.status_code == 200
    (message,) = response.context["messages"]
    assert message.level_tag == "error"
    assert "does not act on STATUS" in message.message
    assert not Command.objects.exists()


def test_queueing_reset_reports_each_device_queued_or_refused(staff_client, online_device):
    documented = DeviceFactory(
        device_id="ESP32_AAAAAAAAAAAA", protocol=Protocol.WIFI_DOCUMENTED, last_seen=timezone.now()
    )
    offline = DeviceFactory(device_id="ESP32_BBBBBBBBBBBB", protocol=Protocol.SERIAL)

    response = staff_client.post(
        reverse("admin:devices_device_changelist"),
        {
            "action": "queue_reset",
            "_selected_action": [documented.pk, offline.pk, online_device.pk],
        },
    )

    command = Command.objects.get()
    assert (command.device, command.kind) == (documented, CommandKind.RESET)
    texts = messages_of(response)
    assert "RESET queued for 1 device(s): ESP32_AAAAAAAAAAAA." in texts
    assert any("ESP32_BBBBBBBBBBBB is offline" in text for text in texts)
    assert any("does not act on RESET" in text for text in texts)


def test_queueing_status_on_a_documented_firmware_device_creates_a_command(staff_client):
    device = DeviceFactory(protocol=Protocol.WIFI_DOCUMENTED, last_seen=timezone.now())

    staff_client.post(
        reverse("admin:devices_device_changelist"),
        {"action": "queue_status", "_selected_action": [device.pk]},
    )

    assert Command.objects.get().kind == CommandKind.STATUS


def test_the_communication_log_is_searchable_and_filterable(staff_client, online_device):
    log_exchange(direction=Direction.IN, transport=Transport.WIFI, message="needle in here")
    log_exchange(direction=Direction.OUT, transport=Transport.SERIAL, message="other")
    url = reverse("admin:devices_communicationlog_changelist")

    response = staff_client.get(f"{url}?q=needle")
    assert [entry.message for entry in response.context["cl"].result_list] == ["needle in here"]
    response = staff_client.get(f"{url}?direction__exact=out&transport__exact=serial")
    assert [entry.message for entry in response.context["cl"].result_list] == ["other"]


def test_the_communication_log_refuses_add_change_and_delete(staff_client, online_device):
    entry = log_exchange(
        direction=Direction.IN, transport=Transport.WIFI, device=online_device, message="hi"
    )
    change = reverse("admin:devices_communicationlog_change", args=[entry.pk])

    assert staff_client.get(reverse("admin:devices_communicationlog_add")).status_code == 403
    assert staff_client.post(change, {"message": "rewritten"}).status_code == 403
    delete = reverse("admin:devices_communicationlog_delete", args=[entry.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    changelist = staff_client.get(reverse("admin:devices_communicationlog_changelist"))
    assert changelist.context["action_form"] is None  # no actions, so no bulk delete
    entry.refresh_from_db()
    assert entry.message == "hi"
    assert CommunicationLog.objects.count() == 1


def test_commands_are_read_only_in_the_admin(staff_client, online_device):
    command = queue_command(device=online_device, kind=CommandKind.VEND, slot=1)

    assert staff_client.get(reverse("admin:devices_command_add")).status_code == 403
    delete = reverse("admin:devices_command_delete", args=[command.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert Command.objects.filter(pk=command.pk).exists()


def test_serial_ports_list_and_the_disconnect_action_records_the_request(staff_client):
    from devices.choices import PortRequest
    from devices.models import SerialPort
    from devices.services import PortReport, report_serial_ports

    report_serial_ports([PortReport(path="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60)])
    url = reverse("admin:devices_serialport_changelist")

    listing = staff_client.get(url)
    response = staff_client.post(
        url,
        {"action": "disconnect", "_selected_action": [SerialPort.objects.get().pk]},
        follow=True,
    )

    assert listing.status_code == 200
    assert b"10C4:EA60" in listing.content
    assert SerialPort.objects.get().requested == PortRequest.DISCONNECT
    assert any("disconnect" in message for message in messages_of(response))
    assert staff_client.get(reverse("admin:devices_serialport_add")).status_code == 403


def test_the_admin_is_branded_and_links_to_the_fleet_status(staff_client):
    response = staff_client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert b"Vending administration" in response.content
    assert b'href="/status"' in response.content
