"""Choice sets of the inventory app."""

from django.db import models


class MovementReason(models.TextChoices):
    VEND = "vend", "Vend (unit reserved)"
    REFUND = "refund", "Refund (unit returned)"
    RESTOCK = "restock", "Restock"
    ADJUSTMENT = "adjustment", "Adjustment"
    SLOT_EMPTY = "slot_empty", "Slot found empty"
