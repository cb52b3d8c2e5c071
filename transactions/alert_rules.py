"""The vends' alert rules (registered in ``TransactionsConfig.ready``): a vend nobody
confirmed, and a slot whose recent vends fail too often (a weak motor). One query each."""

from collections import defaultdict
from datetime import datetime, timedelta

from django.db.models import F, Window
from django.db.models.functions import RowNumber

from vending_site.alerts.models import AlertRule, Severity
from vending_site.alerts.registry import Finding, RuleSpec, register

from .choices import TransactionState
from .models import Transaction

FAILURES, OUT_OF = 3, 10
# Only vends settled this recently count towards a slot's failure rate: the window query
# then reads an index range, not the whole history.
FAILURE_LOOKBACK = timedelta(days=30)


def vends_unconfirmed(rule: AlertRule, now: datetime) -> list[Finding]:
    rows = Transaction.objects.filter(state=TransactionState.UNCONFIRMED).values_list(
        "pk", "device__device_id", "slot_number", "product_name", "unconfirmed_at"
    )
    return [
        Finding(
            subject=f"vend:{pk}",
            title=f"Vend of {product} from slot {slot} of {device_id} is unconfirmed",
            detail={
                "transaction_id": str(pk),
                "device_id": device_id,
                "slot": slot,
                "product": product,
                "unconfirmed_at": unconfirmed_at.isoformat() if unconfirmed_at else None,
            },
            tags={"device": device_id},
            action={"kind": "settle_vend", "transaction_id": str(pk)},
        )
        for pk, device_id, slot, product, unconfirmed_at in rows
    ]


def failing_slots(rule: AlertRule, now: datetime) -> list[Finding]:
    """Slots with at least ``threshold`` failed vends among their last ``window`` settled
    (succeeded or failed) ones of the last 30 days."""
    threshold = rule.threshold or FAILURES
    window = rule.window or OUT_OF
    rows = (
        Transaction.objects.filter(
            state__in=(TransactionState.SUCCEEDED, TransactionState.FAILED),
            completed_at__gte=now - FAILURE_LOOKBACK,
        )
        .annotate(
            recent=Window(
                RowNumber(),
                partition_by=[F("slot_id")],
                order_by=[F("completed_at").desc(), F("created_at").desc()],
            )
        )
        .filter(recent__lte=window)
        .values_list("slot_id", "state", "slot_number", "device__device_id")
    )
    vends: dict[int, list] = defaultdict(lambda: [0, 0, None, None])
    for slot_id, state, slot_number, device_id in rows:
        counts = vends[slot_id]
        counts[0] += 1
        counts[1] += state == TransactionState.FAILED
        counts[2], counts[3] = slot_number, device_id
    return [
        Finding(
            subject=f"slot:{slot_id}",
            title=f"Slot {number} of {device_id} failed {failed} of its last {total} vends",
            detail={
                "slot_id": slot_id,
                "slot": number,
                "device_id": device_id,
                "failed": failed,
                "vends": total,
            },
            tags={"device": device_id},
        )
        for slot_id, (total, failed, number, device_id) in sorted(vends.items())
        if failed >= threshold
    ]


RULES = (
    RuleSpec(
        key="vend_unconfirmed",
        name="Vend unconfirmed",
        description="A machine never said whether it dispensed a vend: a person must settle "
        "it (Dispensed / Not dispensed).",
        check=vends_unconfirmed,
        severity=Severity.CRITICAL,
        cooldown_minutes=30,
    ),
    RuleSpec(
        key="slot_failure_rate",
        name="Slot failing (weak motor)",
        description="At least `threshold` failed vends among a slot's last `window` settled "
        "vends (of the last 30 days). Checked every minute.",
        check=failing_slots,
        severity=Severity.WARNING,
        threshold=FAILURES,
        window=OUT_OF,
        cooldown_minutes=1440,
        every=timedelta(minutes=1),
    ),
)


def register_rules() -> None:
    for spec in RULES:
        register(spec)
