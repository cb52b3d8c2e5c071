"""Reads of alerts: the dashboard's "needs attention" list and the shape every surface
(live events, webhooks, REST) shows an alert in."""

from typing import Any

from django.db.models import Case, IntegerField, QuerySet, Value, When

from .models import Alert, AlertState, Severity

UNRESOLVED = (AlertState.OPEN, AlertState.ACKNOWLEDGED)
SEVERITY_RANK = Case(
    When(severity=Severity.CRITICAL, then=Value(0)),
    When(severity=Severity.WARNING, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


def alerts() -> QuerySet[Alert]:
    """Every alert with what :func:`alert_payload` reads, newest first."""
    return Alert.objects.select_related("rule", "acknowledged_by", "resolved_by").order_by(
        "-opened_at", "-id"
    )


def open_alerts(
    *, rule: str | None = None, severity: str | None = None, device_ids=None
) -> QuerySet[Alert]:
    """Alerts not resolved (open or acknowledged): open before acknowledged, then critical
    first, newest first. ``device_ids`` (a collection) keeps the alerts about those machines
    only (a Driver's routes)."""
    queryset = alerts().filter(state__in=UNRESOLVED)
    if rule:
        queryset = queryset.filter(rule__key=rule)
    if severity:
        queryset = queryset.filter(severity=severity)
    if device_ids is not None:
        queryset = queryset.filter(tags__device__in=list(device_ids))
    state_rank = Case(
        When(state=AlertState.OPEN, then=Value(0)), default=Value(1), output_field=IntegerField()
    )
    return queryset.order_by(state_rank, SEVERITY_RANK, "-opened_at", "-id")


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def alert_payload(alert: Alert) -> dict[str, Any]:
    """An alert as webhooks, live pages and the REST API show it. ``action`` is what the
    dashboard offers (``{"kind": "settle_vend", "transaction_id"}``, ``{"kind":
    "approve_machine", "device_id"}``) or None; ``device_id`` lets a Driver's live socket
    keep to the machines of their routes (``vending_site.live.audience``)."""
    detail = dict(alert.detail or {})
    action = detail.pop("action", None)
    tags = alert.tags or {}
    return {
        "id": alert.pk,
        "rule": alert.rule.key,
        "rule_name": alert.rule.name,
        "subject": alert.subject,
        "title": alert.title,
        "severity": alert.severity,
        "state": alert.state,
        "opened_at": _iso(alert.opened_at),
        "checked_at": _iso(alert.checked_at),
        "notifications": alert.notifications,
        "acknowledged_at": _iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by.get_username() if alert.acknowledged_by else None,
        "acknowledgement_note": alert.acknowledgement_note,
        "resolved_at": _iso(alert.resolved_at),
        "resolved_by": alert.resolved_by.get_username() if alert.resolved_by else None,
        "resolution_note": alert.resolution_note,
        "detail": detail,
        "tags": tags,
        "action": action,
        "device_id": tags.get("device"),
    }
