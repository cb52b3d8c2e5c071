"""REST bodies of webhook subscriptions and their deliveries."""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from vending_site.notify import services
from vending_site.notify.events import EVENT_TYPES
from vending_site.notify.models import Delivery, DeliveryAttempt, Endpoint, EndpointKind


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "string", "enum": list(EVENT_TYPES)},
        "minItems": 1,
        "maxItems": 24,
    }
)
class _EventList(serializers.Field):
    """A list of event types, checked as a whole so a refusal is one sentence naming the
    unknown ones (DRF's nested errors would not fit the documented error body)."""

    def to_internal_value(self, data):
        try:
            return services.check_event_types(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
        "maxProperties": 10,
    }
)
class _Filters(serializers.Field):
    def to_internal_value(self, data):
        try:
            return services.check_filters(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value):
        return value


class WebhookSerializer(serializers.ModelSerializer):
    """A subscription as listed and read: never its secret."""

    events = _EventList(source="event_types")
    filters = _Filters(help_text='Only events whose tags match: {"location": ["3"]}.')

    class Meta:
        model = Endpoint
        fields = ["id", "name", "url", "events", "filters", "is_active", "created_at", "updated_at"]
        read_only_fields = fields


class WebhookWithSecretSerializer(WebhookSerializer):
    """A subscription as created, or after a rotation: with its secret, shown this once."""

    secret = serializers.CharField(
        help_text="The Standard Webhooks signing secret (whsec_...). Store it now: it is "
        "never shown again (rotate it to get a new one)."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class WebhookWriteSerializer(serializers.Serializer):
    """``POST`` (url and events required), ``PUT`` (the same) or ``PATCH`` (what changes)."""

    url = serializers.CharField(
        max_length=2000,
        help_text="An http(s) URL whose host resolves to public addresses only (or inside "
        "WEBHOOK_ALLOWED_NETWORKS).",
    )
    events = _EventList(help_text="Event types to receive (at least one).")
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    filters = _Filters(
        required=False,
        help_text='Only events whose tags match, e.g. {"location": ["3"]}: for each key, the '
        "event's tag must be one of the values.",
    )
    is_active = serializers.BooleanField(required=False)

    def validate_url(self, url: str) -> str:
        try:
            services.check_endpoint_target(kind=EndpointKind.WEBHOOK, url=url, recipients="")
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["url"]) from None
        return url

    def validate(self, attrs: dict) -> dict:
        if isinstance(self.initial_data, dict):
            unknown = sorted(set(self.initial_data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name[:40]: ["Unknown field."] for name in unknown}
                )
        return attrs


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["started_at", "duration_ms", "status_code", "error", "next_attempt_at"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    """One message to this webhook: where it stands, and every try."""

    webhook_id = serializers.CharField(
        source="message.msg_id", help_text="The webhook-id header, the same on every retry."
    )
    event_type = serializers.CharField(source="message.event_type")
    subject = serializers.CharField(source="message.subject")
    attempt_log = DeliveryAttemptSerializer(many=True, help_text="Every try, oldest first.")

    class Meta:
        model = Delivery
        fields = [
            "id",
            "webhook_id",
            "event_type",
            "subject",
            "state",
            "attempts",
            "next_attempt_at",
            "last_status",
            "last_error",
            "delivered_at",
            "created_at",
            "attempt_log",
        ]
        read_only_fields = fields
