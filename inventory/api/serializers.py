from rest_framework import serializers

from inventory.models import Product, Slot


class ProductSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ["id", "name", "sku", "price"]


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
