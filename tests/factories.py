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
    """The role's group, as migration ``vending_site.0003_roles`` creates it.

    A transactional test flushes every table when it ends, and only permissions come back
    (``post_migrate``), not the groups the migration made; a later test on the same worker
    would find none. Like the vend-client group above, it is made again when missing."""
    from django.contrib.auth.models import Group, Permission

    from vending_site.auth import roles

    group, created = Group.objects.get_or_create(name=role)
    if not created:
        return group
    if role == roles.OPERATOR:
        perms = Permission.objects.filter(content_type__app_label__in=roles.OPERATOR_APPS)
    elif role == roles.VIEWER:
        perms = Permission.objects.filter(
            content_type__app_label__in=roles.VIEWER_APPS, codename__startswith="view_"
        )
        group.permissions.add(*_permissions(roles.VIEWER_EXTRA))
    else:
        perms = _permissions(roles.ROLES[role])
    group.permissions.add(*perms)
    return group


def _permissions(names):
    from django.contrib.auth.models import Permission

    found = []
    for name in names:
        app_label, codename = name.split(".", 1)
        found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return found


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
