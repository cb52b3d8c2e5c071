"""REST bodies of the catalogue: products, the stock ledger's rows and a planogram copy."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inventory.models import Product, StockMovement

from .serializers import _StrictMixin


@extend_schema_field(OpenApiTypes.STR)
class _OptionalCurrency(serializers.Field):
    """The install's currency (ISO 4217), shown beside a price, so only when the price is."""

    def __init__(self, **kwargs):
        kwargs.update(source="*", required=False)
        super().__init__(**kwargs)

    def to_representation(self, value) -> str:
        return settings.CURRENCY


class CatalogProductSerializer(serializers.ModelSerializer):
    """A product; ``price`` and ``currency`` only for those who may see prices."""

    price = serializers.DecimalField(
        max_digits=8,
        decimal_places=2,
        required=False,
        help_text="Present only for users who may change prices or read sales.",
    )
    currency = _OptionalCurrency(
        help_text="ISO 4217 code of the price (the CURRENCY setting); present with `price`."
    )

    class Meta:
        model = Product
        fields = ["id", "name", "sku", "price", "currency", "created_at"]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not self.context.get("sees_prices", False):
            data.pop("price", None)
            data.pop("currency", None)
        return data


class ProductWriteSerializer(_StrictMixin, serializers.ModelSerializer):
    """A product's create (``POST``: all fields), replace (``PUT``) or edit (``PATCH``)."""

    name = serializers.CharField(max_length=120, trim_whitespace=True)
    sku = serializers.CharField(
        max_length=64,
        trim_whitespace=True,
        help_text="Unique; a SKU another product has is 400 naming it.",
    )
    price = serializers.DecimalField(
        max_digits=8, decimal_places=2, min_value=0, help_text="In the install's currency."
    )

    class Meta:
        model = Product
        fields = ["name", "sku", "price"]

    def validate_sku(self, value: str) -> str:
        taken = Product.objects.filter(sku=value)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError(f"Another product already has the SKU {value!r}.")
        return value


class StockMovementSerializer(serializers.ModelSerializer):
    """One ledger row: a slot's quantity changed by ``delta`` to ``quantity_after``."""

    machine = serializers.CharField(source="slot.device.device_id", help_text="Device id.")
    slot = serializers.IntegerField(source="slot.number", help_text="Slot number.")
    product = serializers.IntegerField(
        source="slot.product_id",
        allow_null=True,
        help_text="The product the slot holds now (a slot's product may have changed since).",
    )
    user = serializers.CharField(
        source="user.username", allow_null=True, default=None, help_text="Who, for staff moves."
    )
    transaction = serializers.UUIDField(
        source="transaction_id", allow_null=True, help_text="The vend, for vends and refunds."
    )

    class Meta:
        model = StockMovement
        fields = [
            "id",
            "created_at",
            "machine",
            "slot",
            "product",
            "delta",
            "quantity_after",
            "reason",
            "note",
            "user",
            "transaction",
        ]
        read_only_fields = fields


@extend_schema_field({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 500})
class _DeviceIds(serializers.ListField):
    """Device ids; each item is checked by the serializer, so errors come as one flat list."""


class PlanogramCopyToSerializer(_StrictMixin, serializers.Serializer):
    to = _DeviceIds(
        child=serializers.JSONField(),
        allow_empty=False,
        max_length=500,
        help_text="The device ids of the machines to copy onto.",
    )

    def validate_to(self, value: list) -> list[str]:
        # One flat list of messages (the error body's shape), not DRF's per-item dict.
        bad = [
            f"Item {i + 1} is not a device id."
            for i, item in enumerate(value)
            if not isinstance(item, str) or not 1 <= len(item) <= 64
        ]
        if bad:
            raise serializers.ValidationError(bad[:10])
        return value


class CopiedPlanogramSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    copied = serializers.ListField(
        child=serializers.IntegerField(), help_text="The slot numbers set from the source."
    )
    skipped = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="The source's slot numbers this machine lacks (not created).",
    )
    price_changes = serializers.IntegerField(help_text="Slot price overrides changed.")


class PlanogramCopySerializer(serializers.Serializer):
    source = serializers.CharField(help_text="The device id copied from.")
    machines = CopiedPlanogramSerializer(many=True)
