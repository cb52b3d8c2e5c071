"""Prices: the product's, a slot's override, the one rule a vend charges by, the record of
every change (set_price), the admin's screens and the CURRENCY setting."""

import subprocess
import sys
from decimal import Decimal

import pytest
from django.urls import reverse

from inventory.exceptions import PlanogramInvalid
from inventory.models import PriceChange, Product, Slot
from inventory.selectors import price_of
from inventory.services import set_price, update_slot
from tests.factories import DeviceFactory, ProductFactory, SlotFactory

from .test_admin import slot_post_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def test_a_vend_charges_the_slot_price_if_set_else_the_products():
    slot = SlotFactory(product=ProductFactory(price=Decimal("1.50")))
    assert price_of(slot) == Decimal("1.50")

    slot.price = Decimal("0.00")  # a free slot is an override too
    assert price_of(slot) == Decimal("0.00")


def test_set_price_records_who_old_and_new_and_nothing_when_unchanged(staff):
    product = ProductFactory(price=Decimal("1.50"))

    change = set_price(product=product, price=Decimal("1.75"), user=staff)
    assert set_price(product=product, price=Decimal("1.75"), user=staff) is None

    product.refresh_from_db()
    assert product.price == Decimal("1.75")
    assert (change.product, change.slot, change.old_price, change.new_price, change.user) == (
        product,
        None,
        Decimal("1.50"),
        Decimal("1.75"),
        staff,
    )
    assert PriceChange.objects.count() == 1


def test_a_negative_price_is_refused_and_nothing_is_recorded():
    slot = SlotFactory()

    with pytest.raises(PlanogramInvalid):
        set_price(slot=slot, price=Decimal("-0.01"))

    assert Slot.objects.get(pk=slot.pk).price is None
    assert not PriceChange.objects.exists()


def test_update_slot_refuses_a_field_outside_the_planogram():
    with pytest.raises(ValueError):
        update_slot(slot=SlotFactory(), changes={"quantity": 3})


def test_a_product_price_edited_in_the_admin_is_recorded(staff_client, staff):
    product = ProductFactory(name="Water", sku="W-1", price=Decimal("1.00"))

    response = staff_client.post(
        reverse("admin:inventory_product_change", args=[product.pk]),
        {
            "name": "Still water",
            "sku": "W-1",
            "price": "1.20",
            "created_at_0": "2026-01-01",
            "created_at_1": "00:00:00",
        },
    )

    assert response.status_code == 302, response.content
    product.refresh_from_db()
    assert (product.name, product.price) == ("Still water", Decimal("1.20"))
    change = PriceChange.objects.get()
    assert (change.product, change.old_price, change.new_price, change.user) == (
        product,
        Decimal("1.00"),
        Decimal("1.20"),
        staff,
    )


def test_a_slot_price_and_par_edited_in_the_admin_are_saved_and_the_price_recorded(
    staff_client, staff
):
    slot = SlotFactory(device=DeviceFactory(), quantity=2, capacity=10)

    response = staff_client.post(
        reverse("admin:inventory_slot_change", args=[slot.pk]),
        slot_post_data(slot, par=8, price="2.10"),
    )

    assert response.status_code == 302
    slot.refresh_from_db()
    assert (slot.par, slot.price, slot.quantity) == (8, Decimal("2.10"), 2)
    change = PriceChange.objects.get()
    assert (change.slot, change.old_price, change.new_price, change.user) == (
        slot,
        None,
        Decimal("2.10"),
        staff,
    )


def test_a_par_above_capacity_is_refused_on_the_slot_page(staff_client):
    slot = SlotFactory(device=DeviceFactory(), quantity=0, capacity=10)

    response = staff_client.post(
        reverse("admin:inventory_slot_change", args=[slot.pk]), slot_post_data(slot, par=11)
    )

    assert response.status_code == 200
    assert "The PAR (11) cannot be above the slot&#x27;s capacity (10)." in (
        response.content.decode()
    )
    assert Slot.objects.get(pk=slot.pk).par is None


def test_admin_price_columns_show_the_currency(staff_client, online_device, settings):
    settings.CURRENCY = "USD"
    Slot.objects.filter(device=online_device, number=2).update(price=Decimal("3.00"))

    products = staff_client.get(reverse("admin:inventory_product_changelist")).content.decode()
    slots = staff_client.get(reverse("admin:inventory_slot_changelist")).content.decode()

    assert "1.50 USD" in products
    assert "1.50 USD" in slots
    assert "3.00 USD (slot)" in slots


def test_the_price_history_is_read_only_in_the_admin(staff_client, staff):
    change = set_price(product=ProductFactory(), price=Decimal("9.00"), user=staff)

    listing = staff_client.get(reverse("admin:inventory_pricechange_changelist"))
    assert listing.status_code == 200
    assert "9.00" in listing.content.decode()
    url = reverse("admin:inventory_pricechange_change", args=[change.pk])
    assert staff_client.post(url, {"new_price": "1.00"}).status_code == 403
    assert staff_client.get(reverse("admin:inventory_pricechange_add")).status_code == 403
    delete = reverse("admin:inventory_pricechange_delete", args=[change.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert PriceChange.objects.get().new_price == Decimal("9.00")


@pytest.mark.parametrize("value", ["eur", "EURO", "E1R", ""])
def test_the_server_refuses_to_start_with_a_currency_that_is_not_iso_4217(value, settings):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={
            "DJANGO_SETTINGS_MODULE": "vending_site.settings",
            "CURRENCY": value,
            "PATH": "/usr/bin:/bin",
        },
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "CURRENCY must be an ISO 4217 code" in result.stderr


def test_products_keep_their_own_price_when_a_slot_overrides_it():
    product = ProductFactory(price=Decimal("1.50"))
    slot = SlotFactory(product=product)

    set_price(slot=slot, price=Decimal("2.00"))

    assert Product.objects.get(pk=product.pk).price == Decimal("1.50")
    assert price_of(Slot.objects.get(pk=slot.pk)) == Decimal("2.00")
