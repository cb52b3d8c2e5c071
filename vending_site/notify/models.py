"""The outbox of outbound messages and the endpoints they go to."""

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class EndpointKind(models.TextChoices):
    WEBHOOK = "webhook", "Webhook (signed HTTP POST)"
    EMAIL = "email", "E-mail"
    APPRISE = "apprise", "Apprise URL (Telegram, Slack, ntfy, Matrix…)"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class Endpoint(models.Model):
    """Where messages go: a webhook URL, e-mail recipients or an Apprise URL.

    ``event_types`` lists the event types it receives (``notify.events.EVENT_TYPES``).
    ``filters`` narrows them by the tags an event carries: ``{"location": ["3"]}`` passes an
    event only when, for every key with a non-empty list, the event's tag for that key (a value
    or a list of values) is among the listed values. An event without the tag does not pass.
    """

    name = models.CharField(max_length=100)
    kind = models.CharField(
        max_length=10, choices=EndpointKind.choices, default=EndpointKind.WEBHOOK
    )
    url = models.CharField(
        max_length=2000,
        blank=True,
        help_text="The webhook's http(s) URL, or the Apprise URL (empty for e-mail).",
    )
    recipients = models.TextField(
        blank=True, help_text="E-mail addresses, one per line or comma-separated (e-mail only)."
    )
    secret = models.CharField(
        max_length=100,
        default=new_webhook_secret,
        help_text="The Standard Webhooks signing secret (whsec_…), webhooks only.",
    )
    event_types = models.JSONField(default=list, blank=True)
    filters = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def accepts(self, event_type: str, tags: dict) -> bool:
        """Whether an event of ``event_type`` with ``tags`` is for this endpoint."""
        if not self.is_active or event_type not in self.event_types:
            return False
        for key, wanted in (self.filters or {}).items():
            if not wanted:
                continue
            value = tags.get(key)
            values = value if isinstance(value, list | tuple) else [value]
            if not {str(v) for v in values if v is not None} & {str(w) for w in wanted}:
                return False
        return True


class Message(models.Model):
    """One event, as sent: ``msg_id`` is the ``webhook-id`` every delivery and retry carries."""

    msg_id = models.CharField(max_length=40, unique=True, default=new_message_id)
    event_type = models.CharField(max_length=40)
    subject = models.CharField(
        max_length=100, blank=True, help_text="What it is about, e.g. vend:<id>, machine:<id>."
    )
    data = models.JSONField()
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.event_type} {self.msg_id}"

    def body(self) -> dict:
        """The JSON body of a webhook, per Standard Webhooks: type, timestamp, data."""
        return {
            "type": self.event_type,
            "timestamp": self.created_at.isoformat(),
            "data": self.data,
        }


class Delivery(models.Model):
    """One message to one endpoint: pending until sent, retried with backoff, then failed.

    A notifier claims a pending delivery by setting ``claimed_until`` in a conditional update
    (a lease): a delivery is sent by one notifier at a time, and a notifier killed mid-send
    leaves a lease that runs out, after which another sends it again (at least once).
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(state="pending"),
                name="delivery_due",
            ),
            models.Index(fields=["endpoint", "created_at"], name="delivery_endpoint_time"),
        ]

    def __str__(self) -> str:
        return f"{self.message} → {self.endpoint.name}"


class DeliveryAttempt(models.Model):
    """One try at sending a delivery: what came back, how long it took, when the next is due."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"attempt on {self.delivery_id} at {self.started_at:%Y-%m-%d %H:%M:%S}"
