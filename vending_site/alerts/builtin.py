"""The site's own alert rules (registered in ``VendingSiteConfig.ready``): a long-running
process gone silent, an endpoint whose messages fail for good (one query each), and device
polls shed under overload (no query: the metric files)."""

from collections import deque
from datetime import datetime, timedelta

from django.db.models import OuterRef, Subquery

from vending_site.models import ServiceHeartbeat
from vending_site.notify.models import Delivery, DeliveryState, Endpoint
from vending_site.observability import metrics
from vending_site.processes.heartbeat import STALE_BEATS, beat_interval

from .models import AlertRule, Severity
from .registry import Finding, RuleSpec, register


def silent_services(rule: AlertRule, now: datetime) -> list[Finding]:
    """Processes (discovery, serial bridge, sweeper, notifier…) that did not stop cleanly
    and whose last beat is older than ``threshold`` beat intervals."""
    beats = rule.threshold or STALE_BEATS
    cutoff = now - timedelta(seconds=beat_interval() * beats)
    rows = ServiceHeartbeat.objects.filter(stopped_at__isnull=True, beat_at__lt=cutoff)
    return [
        Finding(
            subject=f"service:{row.name}",
            title=f"Service {row.name} is silent (pid {row.pid} on {row.host})",
            detail={
                "service": row.name,
                "pid": row.pid,
                "host": row.host,
                "beat_at": row.beat_at.isoformat(),
            },
        )
        for row in rows
    ]


def failing_endpoints(rule: AlertRule, now: datetime) -> list[Finding]:
    """Active endpoints whose latest finished delivery (delivered or failed, newest first)
    failed for good. Read per endpoint from the newest end of its (endpoint, created_at) index: the
    cost does not grow with the deliveries kept (NOTIFY_RETENTION_DAYS)."""
    latest = (
        Delivery.objects.filter(endpoint=OuterRef("pk"))
        .exclude(state=DeliveryState.PENDING)
        .order_by("-created_at", "-id")
    )
    rows = (
        Endpoint.objects.filter(is_active=True)  # one switched off is not waited on
        .annotate(
            last_state=Subquery(latest.values("state")[:1]),
            last_id=Subquery(latest.values("id")[:1]),
        )
        .filter(last_state=DeliveryState.FAILED)
        .values_list("pk", "name", "kind", "last_id")
    )
    return [
        Finding(
            subject=f"endpoint:{pk}",
            title=f"Deliveries to {name} fail",
            detail={"endpoint_id": pk, "endpoint": name, "kind": kind, "delivery_id": failed},
            tags={"endpoint": pk},
        )
        for pk, name, kind, failed in rows
    ]


SHED_WINDOW_MINUTES = 5
# (when, vending_polls_shed_total) as this process read it at each evaluation: the counter
# is a total since the install began, the rule asks about the last `window` minutes.
_shed_samples: deque[tuple[datetime, float]] = deque(maxlen=1000)


def shed_total() -> float:
    """``vending_polls_shed_total`` over every process of the install (its metric files)."""
    return metrics.counter_total("vending_polls_shed")


def polls_shed(rule: AlertRule, now: datetime) -> list[Finding]:
    """The web servers answered at least ``threshold`` device polls idle without examining
    them (``devices.api.shed_poll``: overloaded) in the last ``window`` minutes. Known from
    the second evaluation of a process on (the first has nothing to compare with)."""
    total = shed_total()
    window = timedelta(minutes=rule.window or SHED_WINDOW_MINUTES)
    if _shed_samples and (total < _shed_samples[-1][1] or now < _shed_samples[-1][0]):
        _shed_samples.clear()  # the metric files were wiped, or the clock went back: again
    while len(_shed_samples) > 1 and _shed_samples[1][0] <= now - window:
        _shed_samples.popleft()  # the oldest kept is the last at or before the window
    _shed_samples.append((now, total))
    shed = total - _shed_samples[0][1]
    if len(_shed_samples) < 2 or shed < (rule.threshold or 1):
        return []
    return [
        Finding(
            subject="service:web",
            title=f"{shed:.0f} device polls shed in {window.seconds // 60} min: the web "
            "server is overloaded",
            detail={"shed": int(shed), "since": _shed_samples[0][0].isoformat()},
        )
    ]


RULES = (
    RuleSpec(
        key="service_silent",
        name="Service silent",
        description="A long-running process (discovery, serial bridge, sweeper, notifier) "
        "did not stop cleanly and has not beaten for `threshold` heartbeat intervals "
        "(SERVICE_HEARTBEAT_SECONDS).",
        check=silent_services,
        severity=Severity.CRITICAL,
        threshold=STALE_BEATS,
        cooldown_minutes=30,
    ),
    RuleSpec(
        key="delivery_failed",
        name="Deliveries failing",
        description="An endpoint's latest finished delivery failed after every retry; "
        "resolves when a later one is delivered.",
        check=failing_endpoints,
        severity=Severity.WARNING,
        cooldown_minutes=60,
    ),
    RuleSpec(
        key="polls_shed",
        name="Polls shed (overload)",
        description="The web servers answered at least `threshold` device polls idle at once, "
        "unexamined, within `window` minutes, because they had waited longer than "
        "DEVICE_POLL_SHED_AFTER: more machines than the servers can serve. Queued vends "
        "still go out, later; add capacity or find what slows the server.",
        check=polls_shed,
        severity=Severity.WARNING,
        threshold=1,
        window=SHED_WINDOW_MINUTES,
        cooldown_minutes=60,
    ),
)


def register_rules() -> None:
    for spec in RULES:
        register(spec)
