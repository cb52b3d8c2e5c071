import copy

from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from transactions.models import Transaction, TransactionEvent


class TransactionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TransactionEvent
        fields = ["from_state", "to_state", "note", "created_at"]


class TransactionSerializer(serializers.ModelSerializer):
    """A transaction as the API shows it (the 202 of a vend, lists, details).

    ``ModelSerializer`` works its fields out from the model on every instantiation, which
    costs more than the serialising itself on the vend's hot path. The fields depend only on
    the class, so each class works them out once and every instance gets fresh copies
    (DRF's own way with declared fields: ``copy.deepcopy``).
    """

    device_id = serializers.CharField(source="device.device_id")
    slot_id = serializers.IntegerField(source="slot_number")
    product = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = Transaction
        fields = [
            "id",
            "state",
            "device_id",
            "slot_id",
            "product",
            "failure_reason",
            "created_at",
            "sent_at",
            "unconfirmed_at",
            "completed_at",
            "updated_at",
            "links",
        ]
        read_only_fields = fields

    def get_fields(self) -> dict:
        cls = type(self)
        prototype = cls.__dict__.get("_fields_prototype")
        if prototype is None:
            prototype = super().get_fields()
            cls._fields_prototype = prototype
        return copy.deepcopy(prototype)

    def get_product(self, txn: Transaction) -> dict:
        return {"name": txn.product_name, "sku": txn.product_sku, "price": str(txn.price)}

    def get_links(self, txn: Transaction) -> dict:
        return {"self": reverse("api-v1:transaction-detail", kwargs={"pk": txn.pk})}


class TransactionDetailSerializer(TransactionSerializer):
    events = TransactionEventSerializer(many=True, read_only=True)

    class Meta(TransactionSerializer.Meta):
        fields = [*TransactionSerializer.Meta.fields, "events"]
        read_only_fields = fields


class VendRequestSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64, required=False, allow_null=True)
    wait = serializers.FloatField(required=False, min_value=0, default=0)

    def validate_wait(self, value: float) -> float:
        if isinstance(self.initial_data.get("wait"), bool):
            raise serializers.ValidationError("A valid number is required.")
        if value > settings.VEND_MAX_WAIT:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.VEND_MAX_WAIT}."
            )
        return value

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({field: ["Unknown field."] for field in unknown})
        return attrs
