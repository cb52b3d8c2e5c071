"""Statements compiled once (vending_site.statements) answer as the querysets they come from."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Command
from inventory.models import Product, Slot
from vending_site.statements import Select, Update

pytestmark = pytest.mark.django_db

NUMBER = Slot._meta.get_field("number")
DEVICE = Slot._meta.get_field("device")


def slot_with_product(device, number):
    return Slot.objects.select_related("product").filter(device=device, number=number)[:1]


def test_a_select_reads_the_row_and_its_related_object_as_the_queryset_does(online_device):
    statement = Select(slot_with_product, device=DEVICE, number=NUMBER)
    expected = slot_with_product(online_device.pk, 3)[0]

    slot = statement.first(device=online_device.pk, number=3)

    assert isinstance(slot, Slot)
    assert slot.pk == expected.pk
    fields = [f.attname for f in Slot._meta.concrete_fields]
    assert [getattr(slot, f) for f in fields] == [getattr(expected, f) for f in fields]
    assert slot._state.adding is False and slot._state.db == "default"
    with CaptureQueriesContext(connection) as captured:
        product = slot.product  # cached by the select_related, as the queryset caches it
    assert len(captured) == 0
    assert isinstance(product, Product) and product.pk == expected.product.pk
    assert (product.name, product.price) == (expected.product.name, expected.product.price)


def test_a_select_caches_a_missing_related_object_as_none(online_device):
    Slot.objects.filter(device=online_device, number=2).update(product=None)
    statement = Select(slot_with_product, device=DEVICE, number=NUMBER)

    slot = statement.first(device=online_device.pk, number=2)

    with CaptureQueriesContext(connection) as captured:
        assert slot.product is None
    assert len(captured) == 0


def test_a_select_without_a_row_gives_none_and_builds_its_queryset_once(online_device):
    built = []

    def build(device, number):
        built.append((device, number))
        return slot_with_product(device, number)

    statement = Select(build, device=DEVICE, number=NUMBER)

    assert statement.first(device=online_device.pk, number=99) is None
    assert statement.first(device=online_device.pk, number=1).number == 1
    assert statement.first(device=online_device.pk + 1, number=1) is None
    assert len(built) == 1  # compiled on first use, with placeholders, then reused


def test_a_values_select_converts_datetimes_as_the_orm_does(online_device):
    now = timezone.now()
    for minutes in (-2, -1, 5):
        Command.objects.create(
            device=online_device, kind="STATUS", expires_at=now + timedelta(minutes=minutes)
        )
    statement = Select(
        lambda device, now: (
            Command.objects.filter(device=device, expires_at__lte=now)
            .order_by("expires_at")
            .values_list("pk", "expires_at")
        ),
        device=Command._meta.get_field("device"),
        now=Command._meta.get_field("expires_at"),
    )

    rows = statement.all(device=online_device.pk, now=now)

    expected = list(
        Command.objects.filter(device=online_device, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", "expires_at")
    )
    assert rows == expected
    assert len(rows) == 2 and rows[0][1].tzinfo is not None


def test_an_update_changes_the_rows_it_matches_and_counts_them(online_device):
    slot = online_device.slots.get(number=1)
    statement = Update(
        lambda pk, quantity: (Slot.objects.filter(pk=pk), {"quantity": quantity}),
        pk=Slot._meta.pk,
        quantity=Slot._meta.get_field("quantity"),
    )

    assert statement.run(pk=slot.pk, quantity=7) == 1
    assert statement.run(pk=slot.pk + 1000, quantity=7) == 0

    slot.refresh_from_db()
    assert slot.quantity == 7


@pytest.mark.django_db(transaction=True)  # outside the test's own transaction
def test_a_locking_select_refuses_to_run_outside_a_transaction(online_device):
    if not connection.features.has_select_for_update:
        pytest.skip("SQLite has no row locks; Django drops FOR UPDATE there")
    statement = Select(
        lambda device, number: slot_with_product(device, number).select_for_update(of=("self",)),
        device=DEVICE,
        number=NUMBER,
    )
    with transaction.atomic():
        assert statement.first(device=online_device.pk, number=1) is not None
    with pytest.raises(TransactionManagementError):
        statement.first(device=online_device.pk, number=1)


def test_a_placeholder_the_sql_holds_twice_is_refused_when_compiled(online_device):
    statement = Select(
        lambda number: Slot.objects.filter(number=number, quantity=number), number=NUMBER
    )

    with pytest.raises(ValueError, match="found 2 times"):
        statement.first(number=1)


def test_an_update_of_more_than_one_table_is_refused(online_device):
    statement = Update(
        lambda number: (Slot.objects.filter(device__slot_count=number), {"quantity": 1}),
        number=NUMBER,
    )

    with pytest.raises(ValueError, match="one table"):
        statement.run(number=5)
