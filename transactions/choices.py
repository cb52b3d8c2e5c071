"""Choice sets of the transactions app."""

from django.db import models


class TransactionState(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent to machine"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    UNCONFIRMED = "unconfirmed", "Unconfirmed (needs staff)"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


FINAL_STATES = frozenset(
    {
        TransactionState.SUCCEEDED,
        TransactionState.FAILED,
        TransactionState.EXPIRED,
        TransactionState.CANCELLED,
    }
)
# States a vend request waits for: final ones, plus `unconfirmed`, which only staff or a
# late confirmation can move on.
SETTLED_STATES = FINAL_STATES | {TransactionState.UNCONFIRMED}
