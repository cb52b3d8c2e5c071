import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from .choices import TransactionState


class Transaction(models.Model):
    """One vend: what was asked, what it cost, and where it stands.

    Product name and price are copied at request time so later edits of the product do
    not rewrite history. ``state`` changes only through ``transactions.lifecycle.transition``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey(
        "devices.Device", on_delete=models.PROTECT, related_name="transactions"
    )
    slot = models.ForeignKey(
        "inventory.Slot", on_delete=models.PROTECT, related_name="transactions"
    )
    slot_number = models.PositiveSmallIntegerField()
    product = models.ForeignKey(
        "inventory.Product", on_delete=models.SET_NULL, null=True, blank=True
    )
    product_name = models.CharField(max_length=120)
    product_sku = models.CharField(max_length=64)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    state = models.CharField(
        max_length=12, choices=TransactionState.choices, default=TransactionState.QUEUED
    )
    failure_reason = models.CharField(max_length=255, blank=True)
    idempotency_key = models.CharField(
        max_length=255, blank=True, help_text="The Idempotency-Key the client sent, if any."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(
        null=True, blank=True, help_text="When it reached succeeded, failed, expired or cancelled."
    )
    unconfirmed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        permissions = [("view_sales", "Can see sales, revenue and the prices charged")]
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "created_at"], name="transaction_state_time"),
            models.Index(fields=["device", "created_at"], name="transaction_device_time"),
        ]

    def __str__(self) -> str:
        return f"{self.product_name} from {self.slot_number} ({self.state})"


class TransactionEvent(models.Model):
    """One state change of a transaction: the vend's audit trail."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="events")
    from_state = models.CharField(max_length=12, choices=TransactionState.choices, blank=True)
    to_state = models.CharField(max_length=12, choices=TransactionState.choices)
    note = models.CharField(max_length=255, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_state or '∅'} → {self.to_state}"


class IdempotencyKey(models.Model):
    """An ``Idempotency-Key`` a client sent with a vend request, scoped to that client."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    transaction = models.ForeignKey(
        Transaction, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    locked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="unique_idempotency_key")
        ]

    def __str__(self) -> str:
        return self.key

    @property
    def in_progress(self) -> bool:
        return self.transaction_id is None
