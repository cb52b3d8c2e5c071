"""The stock's alert rules (registered in ``InventoryConfig.ready``): a slot empty, a slot
low, a slot whose quantity the ledger does not explain. Each check is one query."""

from datetime import datetime, timedelta

from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce

from vending_site.alerts.models import AlertRule, Severity
from vending_site.alerts.registry import Finding, RuleSpec, register

from .models import Slot

SLOT_FIELDS = ("pk", "number", "quantity", "device__device_id", "product__name")


def slot_subject(slot_pk: int) -> str:
    return f"slot:{slot_pk}"


def _stocked_slots():
    """Enabled slots with a product: the ones a customer can be refused from."""
    return Slot.objects.filter(enabled=True, product__isnull=False)


def _finding(row: dict, title: str, **detail) -> Finding:
    device_id = row["device__device_id"]
    return Finding(
        subject=slot_subject(row["pk"]),
        title=f"{title}: slot {row['number']} of {device_id}",
        detail={
            "slot_id": row["pk"],
            "slot": row["number"],
            "device_id": device_id,
            "product": row["product__name"] or "",
            "quantity": row["quantity"],
            **detail,
        },
        tags={"device": device_id},
    )


def slots_empty(rule: AlertRule, now: datetime) -> list[Finding]:
    rows = _stocked_slots().filter(quantity=0).values(*SLOT_FIELDS)
    return [_finding(row, "Empty") for row in rows]


def slots_low(rule: AlertRule, now: datetime) -> list[Finding]:
    """0 < quantity <= the slot's own ``low_stock_threshold``."""
    rows = (
        _stocked_slots()
        .filter(quantity__gt=0, quantity__lte=F("low_stock_threshold"))
        .values(*SLOT_FIELDS, "low_stock_threshold")
    )
    return [
        _finding(row, "Low stock", low_stock_threshold=row["low_stock_threshold"]) for row in rows
    ]


def ledger_mismatches(rule: AlertRule, now: datetime) -> list[Finding]:
    """Slots whose quantity differs from the sum of their ledger movements (one aggregate
    over the ledger; the rule runs every few minutes, not every evaluation)."""
    rows = (
        Slot.objects.annotate(ledger=Coalesce(Sum("movements__delta"), 0))
        .filter(~Q(quantity=F("ledger")))
        .values(*SLOT_FIELDS, "ledger")
    )
    return [_finding(row, "Stock disagrees with the ledger", ledger=row["ledger"]) for row in rows]


RULES = (
    RuleSpec(
        key="slot_empty",
        name="Slot empty",
        description="An enabled slot with a product has no unit left. Sends stock.empty when "
        "it opens.",
        check=slots_empty,
        severity=Severity.WARNING,
        cooldown_minutes=240,
        opened_event="stock.empty",
    ),
    RuleSpec(
        key="slot_low",
        name="Slot low",
        description="An enabled slot with a product holds at most its own low-stock "
        "threshold (and at least one unit). Sends stock.low when it opens.",
        check=slots_low,
        severity=Severity.INFO,
        cooldown_minutes=0,
        opened_event="stock.low",
    ),
    RuleSpec(
        key="stock_ledger_mismatch",
        name="Stock disagrees with the ledger",
        description="A slot's quantity is not the sum of its stock movements: stock was "
        "changed outside move_stock. Checked every 5 minutes.",
        check=ledger_mismatches,
        severity=Severity.CRITICAL,
        cooldown_minutes=60,
        every=timedelta(minutes=5),
    ),
)


def register_rules() -> None:
    for spec in RULES:
        register(spec)
