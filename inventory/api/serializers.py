"""The inventory's REST bodies: products, slots as the fleet sees them (``/status``), the
planogram (a machine's slots with PAR and prices), its edits and restocks."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inventory.models import Product, Slot
from inventory.selectors import price_of


@extend_schema_field(OpenApiTypes.STR)
class CurrencyField(serializers.Field):
    """The install's currency (``settings.CURRENCY``, ISO 4217), beside every price."""

    def __init__(self, **kwargs):
        kwargs.update(source="*", read_only=True)
        kwargs.setdefault("help_text", "ISO 4217 code of the prices (the CURRENCY setting).")
        super().__init__(**kwargs)

    def to_representation(self, value) -> str:
        return settings.CURRENCY


class ProductSerializer(serializers.ModelSerializer):
    currency = CurrencyField()

    class Meta:
        model = Product
        fields = ["id", "name", "sku", "price", "currency"]


class SlotSerializer(serializers.ModelSerializer):
    slot_id = serializers.IntegerField(source="number")
    product = ProductSerializer(allow_null=True)
    low_stock = serializers.BooleanField(source="is_low")

    class Meta:
        model = Slot
        fields = [
            "slot_id",
            "product",
            "quantity",
            "capacity",
            "low_stock_threshold",
            "low_stock",
            "enabled",
            "needs_attention",
        ]
        read_only_fields = fields


class PlanogramSlotSerializer(SlotSerializer):
    """A slot in a machine's planogram: what it holds, what it is filled to, what it costs."""

    fill_to = serializers.IntegerField(
        help_text="What a full restock fills to: `par`, else `capacity`."
    )
    to_load = serializers.SerializerMethodField(help_text="`fill_to` - `quantity`, at least 0.")
    price = serializers.SerializerMethodField(
        help_text="What a vend charges: `price_override`, else the product's price "
        "(null without either)."
    )
    price_override = serializers.DecimalField(
        source="price", max_digits=8, decimal_places=2, allow_null=True
    )
    currency = CurrencyField()

    class Meta(SlotSerializer.Meta):
        fields = [
            *SlotSerializer.Meta.fields[:4],
            "par",
            "fill_to",
            "to_load",
            *SlotSerializer.Meta.fields[4:],
            "price",
            "price_override",
            "currency",
        ]
        read_only_fields = fields

    def get_to_load(self, slot: Slot) -> int:
        return max(slot.fill_to - slot.quantity, 0)

    def get_price(self, slot: Slot) -> str | None:
        if slot.price is None and slot.product is None:
            return None
        return f"{price_of(slot):.2f}"


class PlanogramSerializer(serializers.Serializer):
    """A machine's slots (the answer of the planogram's read and of a restock)."""

    device_id = serializers.CharField()
    slots = PlanogramSlotSerializer(many=True)


class _StrictMixin:
    def validate(self, attrs: dict) -> dict:
        if not isinstance(self.initial_data, dict):
            return attrs
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({field: ["Unknown field."] for field in unknown})
        return attrs


class _StrictInteger(serializers.IntegerField):
    """An integer as JSON writes one: ``3``, not ``"3"``, ``3.0`` or ``true``."""

    def to_internal_value(self, data):
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class SlotUpdateSerializer(_StrictMixin, serializers.Serializer):
    """``PATCH`` of one slot's planogram; only the fields sent change."""

    product = serializers.PrimaryKeyRelatedField(
        queryset=Product.objects.all(), allow_null=True, required=False
    )
    capacity = _StrictInteger(min_value=0, max_value=2**31 - 1, required=False)
    par = _StrictInteger(min_value=0, max_value=2**31 - 1, allow_null=True, required=False)
    low_stock_threshold = _StrictInteger(min_value=0, max_value=2**31 - 1, required=False)
    price = serializers.DecimalField(
        max_digits=8, decimal_places=2, min_value=0, allow_null=True, required=False
    )
    enabled = serializers.BooleanField(required=False)

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        if not attrs:
            raise serializers.ValidationError(
                "Send at least one of: " + ", ".join(self.fields) + "."
            )
        return attrs


class RestockRequestSerializer(_StrictMixin, serializers.Serializer):
    """``{"loaded": {"<slot>": <units added>, ...}, "note": "..."}``. Each fill is checked
    by the restock service (422 naming the slot); here only the body's shape."""

    loaded = serializers.DictField(
        child=serializers.JSONField(allow_null=True),
        allow_empty=False,
        help_text='Units added per slot number, e.g. `{"1": 4, "3": 2}`.',
    )
    note = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


PRICE_FIELDS = frozenset({"price", "price_override"})


def without_prices(data):
    """``data`` (a serializer's answer) with every price nulled, at any depth: the answer
    for someone who may not see money (``vending_site.auth.roles.sees_prices``)."""
    if isinstance(data, dict):
        return {
            key: None if key in PRICE_FIELDS else without_prices(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [without_prices(item) for item in data]
    return data
