import copy

from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from transactions.models import Transaction, TransactionEvent


class TransactionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TransactionEvent
        fields = ["from_state", "to_state", "note", "created_at"]


# Formats a datetime as every DateTimeField of these serializers does (the API's format and
# time zone); unbound, as it needs no parent to do that.
_DATETIME = serializers.DateTimeField(read_only=True)
_TIMES = ("created_at", "sent_at", "unconfirmed_at", "completed_at", "updated_at")


class TransactionSerializer(serializers.ModelSerializer):
    """A transaction as the API shows it (the 202 of a vend, lists, details).

    ``ModelSerializer`` works its fields out from the model on every instantiation, which
    costs more than the serialising itself on the vend's hot path. The fields depend only on
    the class, so each class works them out once and every instance gets fresh copies
    (DRF's own way with declared fields: ``copy.deepcopy``). Reading a transaction needs no
    fields at all: :meth:`to_representation` builds the same object directly (the fields
    still describe it, for the OpenAPI schema), so a vend's 202 copies none.
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

    def to_representation(self, txn: Transaction) -> dict:
        times = {name: getattr(txn, name) for name in _TIMES}
        for name, value in times.items():
            times[name] = None if value is None else _DATETIME.to_representation(value)
        return {
            "id": str(txn.pk),
            "state": str(txn.state),
            "device_id": txn.device.device_id,
            "slot_id": txn.slot_number,
            "product": self.get_product(txn),
            "failure_reason": txn.failure_reason,
            **times,
            "links": self.get_links(txn),
        }

    def get_fields(self) -> dict:
        cls = type(self)
        prototype = cls.__dict__.get("_fields_prototype")
        if prototype is None:
            prototype = super().get_fields()
            cls._fields_prototype = prototype
        return copy.deepcopy(prototype)

    def get_product(self, txn: Transaction) -> dict:
        # A Driver's or a Technician's own vends answer without the price charged (no money
        # for them); kiosks and staff who see prices get it (context "hide_prices").
        price = None if self.context.get("hide_prices") else str(txn.price)
        return {"name": txn.product_name, "sku": txn.product_sku, "price": price}

    def get_links(self, txn: Transaction) -> dict:
        return {"self": reverse("api-v1:transaction-detail", kwargs={"pk": txn.pk})}


class TransactionDetailSerializer(TransactionSerializer):
    events = TransactionEventSerializer(many=True, read_only=True)

    class Meta(TransactionSerializer.Meta):
        fields = [*TransactionSerializer.Meta.fields, "events"]
        read_only_fields = fields

    def to_representation(self, txn: Transaction) -> dict:
        data = super().to_representation(txn)
        data["events"] = self.fields["events"].to_representation(txn.events.all())
        return data


class VendRequestSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64, required=False, allow_null=True)
    wait = serializers.FloatField(required=False, min_value=0, default=0)

    @classmethod
    def read(cls, body: dict) -> dict:
        """The validated body. The bodies kiosks send (``{}``, a plain ``device_id``, a
        ``wait`` in range) are read directly, as the fields would read them; anything else
        goes through the fields, which own every error and every conversion."""
        plain = _plain_vend_body(body)
        if plain is not None:
            return plain
        serializer = cls(data=body)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

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


def _plain_vend_body(body: dict) -> dict | None:
    """:class:`VendRequestSerializer`'s validated data for a body nothing in it could make
    the fields refuse or change, else ``None``."""
    if not body.keys() <= {"device_id", "wait"}:
        return None
    data: dict = {"wait": 0}
    if "device_id" in body:
        device_id = body["device_id"]
        if device_id is not None and not (
            type(device_id) is str
            and 0 < len(device_id) <= 64
            and device_id.isprintable()  # no NUL, no surrogates, no whitespace but " "
            and device_id == device_id.strip()
        ):
            return None
        data["device_id"] = device_id
    if "wait" in body:
        wait = body["wait"]
        if type(wait) not in (int, float) or not 0 <= wait <= settings.VEND_MAX_WAIT:
            return None  # a bool, a string, null, NaN, out of range: the field says why
        data["wait"] = float(wait)
    return data
