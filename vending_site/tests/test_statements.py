"""Statements compiled once (vending_site.backends.statements) answer as the querysets they come
from."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import F, signals
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Command
from inventory.models import Product, Slot
from vending_site.backends.statements import Insert, Select, Update

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


def test_a_select_sets_the_annotations_of_its_rows(online_device):
    statement = Select(
        lambda number: (
            Slot.objects.filter(number__gte=number)
            .annotate(room=F("capacity") - F("quantity"))
            .order_by("-number")[:1]
        ),
        number=NUMBER,
    )
    online_device.slots.filter(number=5).update(quantity=3, capacity=10)

    slot = statement.first(number=2)

    assert (slot.number, slot.room) == (5, 7)


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


def test_an_insert_saves_what_create_saves_and_reads_the_new_id_back(online_device):
    from inventory.models import StockMovement

    slot = online_device.slots.get(number=1)
    seen = []

    def pre(instance, **kwargs):
        seen.append(("pre", instance.pk, kwargs.get("created")))

    def post(instance, **kwargs):
        seen.append(("post", instance.pk, kwargs.get("created")))

    signals.pre_save.connect(pre, sender=StockMovement)
    signals.post_save.connect(post, sender=StockMovement)
    try:
        fields = {"slot": slot, "delta": -1, "quantity_after": 4, "reason": "vend", "note": "x"}
        made = Insert(StockMovement).create(**fields)
        again = Insert(StockMovement).create(**fields)
    finally:
        signals.pre_save.disconnect(pre, sender=StockMovement)
        signals.post_save.disconnect(post, sender=StockMovement)
    by_orm = StockMovement.objects.create(**fields)

    assert isinstance(made.pk, int) and again.pk > made.pk and by_orm.pk > again.pk
    assert made._state.adding is False and made._state.db == "default"
    assert seen == [
        ("pre", None, None),
        ("post", made.pk, True),
        ("pre", None, None),
        ("post", again.pk, True),
    ]
    columns = [f.attname for f in StockMovement._meta.concrete_fields if f.attname != "id"]
    stored = StockMovement.objects.filter(pk__in=[made.pk, by_orm.pk]).order_by("pk")
    mine, theirs = stored.values_list(*columns)
    assert mine[:-1] == theirs[:-1]  # all but created_at, a moment apart
    assert made.created_at == stored[0].created_at


def test_an_insert_the_database_refuses_rolls_back_as_create_would(user):
    from transactions.models import IdempotencyKey

    keys = Insert(IdempotencyKey)
    keys.create(user=user, key="k", fingerprint="f")

    with pytest.raises(IntegrityError), transaction.atomic():
        keys.create(user=user, key="k", fingerprint="g")

    assert list(IdempotencyKey.objects.values_list("fingerprint", flat=True)) == ["f"]


def test_a_model_with_a_save_of_its_own_is_not_inserted_around_it():
    from django.contrib.auth import get_user_model

    with pytest.raises(TypeError, match="not a plain model"):
        Insert(get_user_model())  # AbstractBaseUser.save() resets the cleartext password
