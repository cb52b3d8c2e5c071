"""The device list's "Copy planogram from…" action: an intermediate page choosing the source,
then the copy (inventory.planogram.copy_planogram), allowed only to who may set slots and
prices."""

from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from inventory.choices import MovementReason
from inventory.models import PriceChange, Slot
from inventory.services import ensure_slots, move_stock
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from vending_site.auth import roles

from .test_admin import messages_of

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:devices_device_changelist")


@pytest.fixture
def fleet():
    source = DeviceFactory(device_id="ESP32_0000000000F1", slot_count=2)
    SlotFactory(device=source, number=1, quantity=0, capacity=6, price=Decimal("2.20"))
    SlotFactory(device=source, number=2, quantity=0, capacity=4)
    small = DeviceFactory(device_id="ESP32_0000000000F2", slot_count=1)
    ensure_slots(device=small, count=1)
    twin = DeviceFactory(device_id="ESP32_0000000000F3", slot_count=2)
    ensure_slots(device=twin, count=2)
    return source, small, twin


def act(client, targets, **more):
    data = {"action": "copy_planogram_from", ACTION_CHECKBOX_NAME: [t.pk for t in targets]}
    data.update(more)
    return client.post(CHANGELIST, data, follow="apply" in more)


def test_the_action_asks_for_the_source_then_copies_onto_the_selected_machines(client, fleet):
    source, small, twin = fleet
    operator = staff_with_role(roles.OPERATOR)
    client.force_login(operator)

    page = act(client, [small, twin])

    assert page.status_code == 200
    html = page.content.decode()
    assert "Copy the planogram of" in html and "ESP32_0000000000F2" in html
    assert not PriceChange.objects.exists()  # nothing until the source is chosen

    done = act(client, [small, twin], apply="1", source=source.pk)

    assert done.status_code == 200
    assert messages_of(done) == [
        "ESP32_0000000000F2: 1 slot(s) set from ESP32_0000000000F1 (1 price change(s) "
        "recorded). Skipped slot(s) 2: this machine has no such slot.",
        "ESP32_0000000000F3: 2 slot(s) set from ESP32_0000000000F1 (1 price change(s) recorded).",
    ]
    assert list(
        Slot.objects.filter(device=twin).order_by("number").values_list("capacity", "price")
    ) == [(6, Decimal("2.20")), (4, None)]
    assert PriceChange.objects.filter(user=operator).count() == 2


def test_a_fuller_target_slot_stops_the_copy_with_a_message_naming_it(client, fleet):
    source, small, twin = fleet
    client.force_login(staff_with_role(roles.OPERATOR))
    slot = Slot.objects.get(device=twin, number=2)
    Slot.objects.filter(pk=slot.pk).update(product=ProductFactory(sku="FULL"))
    move_stock(slot=slot, delta=5, reason=MovementReason.RESTOCK)

    done = act(client, [small, twin], apply="1", source=source.pk)

    assert messages_of(done) == [
        "Nothing was copied. ESP32_0000000000F3 slot 2 holds 5 units, more than the copied "
        "capacity (4)."
    ]
    assert Slot.objects.get(device=small, number=1).capacity == 10
    assert not PriceChange.objects.exists()


@pytest.mark.parametrize("role", [roles.TECHNICIAN, roles.DRIVER, roles.VIEWER])
def test_roles_that_may_not_set_prices_are_not_offered_the_copy(client, fleet, role):
    source, _, twin = fleet
    client.force_login(staff_with_role(role))

    listing = client.get(CHANGELIST)
    act(client, [twin], apply="1", source=source.pk)

    if listing.status_code == 200 and listing.context.get("action_form"):
        choices = dict(listing.context["action_form"].fields["action"].choices)
        assert "copy_planogram_from" not in choices
    assert Slot.objects.get(device=twin, number=1).capacity == 10
    assert not PriceChange.objects.exists()
