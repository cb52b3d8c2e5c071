"""factory_boy factories for the models the tests build."""

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from devices.models import Device
from inventory.choices import MovementReason
from inventory.models import Product, Slot
from inventory.services import ensure_slots, set_stock


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests-1")

    @factory.post_generation
    def vend_client(obj, create, extracted, **kwargs):
        """A REST client by default (in the vend-client group); ``vend_client=False`` for a
        user with no role."""
        if create and extracted is not False:
            from django.contrib.auth.models import Group

            obj.groups.add(Group.objects.get_or_create(name="vend-client")[0])


def staff_with_role(role: str, **fields):
    """A staff account (not a superuser) holding one role of ``vending_site.auth.roles``."""
    user = UserFactory(is_staff=True, vend_client=False, **fields)
    user.groups.add(role_group(role))
    return user


def role_group(role: str):
    """The role's group with the permissions migration ``vending_site.0003_roles`` gives it,
    made again if missing: a transactional test's flush deletes the migration's rows (its
    post_migrate brings back permissions, not groups: see the root conftest)."""
    from django.contrib.auth.models import Group, Permission
    from django.db.models import Q

    from vending_site.auth import roles

    group, created = Group.objects.get_or_create(name=role)
    if not created:
        return group

    def named(names) -> Q:
        query = Q(pk__in=[])
        for name in names:
            app_label, codename = name.split(".")
            query |= Q(content_type__app_label=app_label, codename=codename)
        return query

    if role == roles.OPERATOR:
        wanted = Q(content_type__app_label__in=roles.OPERATOR_APPS)
    elif role == roles.VIEWER:
        wanted = Q(content_type__app_label__in=roles.VIEWER_APPS, codename__startswith="view_")
        wanted |= named(roles.VIEWER_EXTRA)
    else:
        wanted = named(roles.ROLES[role])
    group.permissions.set(Permission.objects.filter(wanted))
    return group


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device
        django_get_or_create = ("device_id",)

    device_id = factory.Sequence(lambda n: f"ESP32_{n:012X}")
    slot_count = 5
    # Approved (the model's default) and bound to the Django test client's own address.
    bound_address = "127.0.0.1"
    last_address = "127.0.0.1"


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product
        django_get_or_create = ("sku",)

    name = factory.Sequence(lambda n: f"Product {n}")
    sku = factory.Sequence(lambda n: f"SKU-{n:04d}")
    price = Decimal("1.50")


class SlotFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Slot

    device = factory.SubFactory(DeviceFactory)
    number = 1
    product = factory.SubFactory(ProductFactory)
    quantity = 5
    capacity = 10


def stocked_device(device_id: str, *, quantity: int = 5, capacity: int = 10, **fields) -> Device:
    """The device (created now, or as its link already registered it) with a product in every
    slot and ``quantity`` units each, stocked through the ledger like real stock."""
    device = DeviceFactory(device_id=device_id, **fields)
    ensure_slots(device=device, count=device.slot_count)
    for slot in Slot.objects.filter(device=device).order_by("number"):
        if slot.product_id is None:
            product = ProductFactory(sku=f"{device_id}-{slot.number}")
            Slot.objects.filter(pk=slot.pk).update(product=product, capacity=capacity)
        set_stock(slot=slot, quantity=quantity, reason=MovementReason.RESTOCK)
    return device
