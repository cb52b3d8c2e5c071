"""factory_boy factories for the models the tests build."""

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from devices.models import Device
from inventory.models import Product, Slot


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests-1")


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device
        django_get_or_create = ("device_id",)

    device_id = factory.Sequence(lambda n: f"ESP32_{n:012X}")
    slot_count = 5


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
