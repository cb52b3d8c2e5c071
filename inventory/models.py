from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from .choices import MovementReason


class Product(models.Model):
    name = models.CharField(max_length=120)
    sku = models.CharField("SKU", max_length=64, unique=True)
    price = models.DecimalField(max_digits=8, decimal_places=2, validators=[MinValueValidator(0)])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        permissions = [("change_price", "Can change prices (products and slot overrides)")]
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="product_price_not_negative")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.sku})"


class Slot(models.Model):
    """A numbered position in one machine, holding units of one product.

    ``quantity`` is what can still be sold: a unit reserved by a vend in flight is already
    taken off. It changes only through ``inventory.services.move_stock``.
    """

    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="slots")
    number = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, null=True, blank=True, related_name="slots"
    )
    quantity = models.PositiveIntegerField(default=0)
    capacity = models.PositiveIntegerField(default=10)
    low_stock_threshold = models.PositiveIntegerField(
        default=2, help_text="The slot is flagged as low when quantity is at or below this."
    )
    par = models.PositiveIntegerField(
        "PAR",
        null=True,
        blank=True,
        help_text="Fill-to level for restocking; empty means the capacity.",
    )
    price = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Price of a vend from this slot; empty means the product's price.",
    )
    enabled = models.BooleanField(default=True)
    needs_attention = models.BooleanField(
        default=False, help_text="Set when the machine reported the slot empty."
    )

    class Meta:
        permissions = [("restock_slot", "Can record units loaded into a slot")]
        ordering = ["device", "number"]
        constraints = [
            models.UniqueConstraint(fields=["device", "number"], name="unique_slot_per_device"),
            models.CheckConstraint(condition=Q(number__gte=1), name="slot_number_positive"),
            models.CheckConstraint(condition=Q(quantity__gte=0), name="slot_quantity_not_negative"),
            models.CheckConstraint(
                condition=Q(quantity__lte=F("capacity")), name="slot_quantity_within_capacity"
            ),
            models.CheckConstraint(
                condition=Q(par__isnull=True) | Q(par__lte=F("capacity")),
                name="slot_par_within_capacity",
            ),
            models.CheckConstraint(
                condition=Q(price__isnull=True) | Q(price__gte=0),
                name="slot_price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.device.device_id} slot {self.number}"

    @property
    def is_low(self) -> bool:
        return self.quantity <= self.low_stock_threshold

    @property
    def is_empty(self) -> bool:
        return self.quantity == 0

    @property
    def fill_to(self) -> int:
        """What a full restock fills the slot to: its PAR, else its capacity."""
        return self.capacity if self.par is None else self.par


class StockMovement(models.Model):
    """One line of the stock ledger. Rows are never changed or deleted.

    For every slot, the sum of ``delta`` equals its quantity, and ``quantity_after`` is the
    quantity right after this movement.
    """

    slot = models.ForeignKey(Slot, on_delete=models.PROTECT, related_name="movements")
    delta = models.IntegerField()
    quantity_after = models.PositiveIntegerField()
    reason = models.CharField(max_length=20, choices=MovementReason.choices)
    transaction = models.ForeignKey(
        "transactions.Transaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="stock_movements",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True
    )
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["slot", "created_at"], name="movement_slot_time")]

    def __str__(self) -> str:
        return f"{self.slot} {self.delta:+d} ({self.reason})"


class PriceChange(models.Model):
    """One change of a price: a product's, or a slot's override (``None`` = no override,
    the product's price applies). Written only by ``inventory.services.set_price``; rows are
    never changed or deleted."""

    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, null=True, blank=True, related_name="price_changes"
    )
    slot = models.ForeignKey(
        Slot, on_delete=models.PROTECT, null=True, blank=True, related_name="price_changes"
    )
    old_price = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    new_price = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True
    )
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(product__isnull=False) & Q(slot__isnull=True))
                | (Q(product__isnull=True) & Q(slot__isnull=False)),
                name="price_change_of_product_or_slot",
            )
        ]

    def __str__(self) -> str:
        return f"{self.product or self.slot}: {self.old_price} -> {self.new_price}"
