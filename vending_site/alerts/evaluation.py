"""Evaluating the registered rules: one alert per rule and subject while its condition lasts.

:func:`run_checks` is called by the notifier every ``ALERT_CHECK_SECONDS``. For each rule, in
one database transaction (a crash part-way loses nothing: the rule is evaluated again next
time from what was committed):

- a subject found for the first time opens an alert and sends ``alert.opened`` (and the
  rule's own event, ``machine.offline``, ``stock.empty``…);
- a subject still found keeps its alert (``checked_at``, ``detail`` refreshed); an open alert
  not acknowledged is reminded of once per ``cooldown_minutes`` (``alert.opened`` again with
  ``reminder: true`` and ``count``);
- an alert whose subject is no longer found resolves itself (``resolved_by`` empty) and sends
  ``alert.resolved`` (and ``machine.online``…); a disabled rule resolves all of its alerts.
- a machine in maintenance (``Device.maintenance_until``) opens no new alert and its open
  ones are not reminded of; they still resolve when their condition clears.
- a subject staff resolved by hand while its condition held stays quiet for the rule's
  cooldown (an hour when the rule never reminds) instead of opening again at once.
- a condition that cleared and comes back within the cooldown of its last announcement (a
  flapping machine or process) opens an alert at once, but announces it (``alert.opened``,
  then ``alert.resolved``) only once that cooldown has passed, as a reminder would be: no
  storm. The rule's own events (``machine.offline``/``online``) are still sent every time.

Two notifiers may evaluate at once: the database allows one unresolved alert per rule and
subject (the loser's INSERT fails in its own savepoint and is skipped), and reminders and
resolutions are conditional updates, so each is sent by one of them only. Every change is
published to live pages (``alert`` events).
"""

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from vending_site.live.events import publish
from vending_site.notify.events import emit

from . import registry
from .models import Alert, AlertRule, AlertState
from .registry import Finding, MachineContext, RuleSpec
from .selectors import UNRESOLVED, alert_payload, alerts

logger = logging.getLogger(__name__)

QUIET_AFTER_MANUAL_RESOLVE = timedelta(hours=1)  # when the rule's cooldown is 0
DISABLED_NOTE = "The rule was disabled."
CLEARED_NOTE = "The condition cleared."

# When this process last evaluated each rule that has an ``every`` (RuleSpec.every).
_last_run: dict[str, datetime] = {}


def ensure_rules(*, apps=None, **_signal) -> int:
    """Create the :class:`AlertRule` row of each registered rule that has none, with its
    defaults; a row that exists is left as staff edited it. Connected to ``post_migrate``
    (after every ``migrate`` and ``flush``). One query when every row exists."""
    model = AlertRule
    if apps is not None:
        try:
            model = apps.get_model("vending_site", "AlertRule")
        except LookupError:  # migrated back before the alerts existed
            return 0
    specs = registry.rules()
    existing = set(model.objects.filter(key__in=list(specs)).values_list("key", flat=True))
    missing = [
        model(key=key, **spec.defaults()) for key, spec in specs.items() if key not in existing
    ]
    if missing:
        model.objects.bulk_create(missing, ignore_conflicts=True)
    return len(missing)


def run_checks(*, now: datetime | None = None) -> None:
    """Evaluate every registered rule (see the module's docstring). A rule whose check fails
    is logged and skipped; the others are evaluated all the same."""
    now = now or timezone.now()
    specs = registry.rules()
    if not specs:
        return
    rows = {rule.key: rule for rule in AlertRule.objects.filter(key__in=list(specs))}
    if len(rows) < len(specs):
        ensure_rules()
        rows = {rule.key: rule for rule in AlertRule.objects.filter(key__in=list(specs))}
    for key, spec in specs.items():
        rule = rows.get(key)
        if rule is None or not _due(spec, rule, now):
            continue
        try:
            evaluate(rule, spec, now=now)
        except Exception:
            logger.exception("alert rule %s could not be evaluated", key)
        else:
            if spec.every is not None:
                _last_run[key] = now


def _due(spec: RuleSpec, rule: AlertRule, now: datetime) -> bool:
    if spec.every is None or not rule.enabled:
        return True
    last = _last_run.get(spec.key)
    return last is None or now < last or now - last >= spec.every


def evaluate(rule: AlertRule, spec: RuleSpec, *, now: datetime) -> None:
    """Evaluate one rule now, whatever its ``every``, in one transaction."""
    with transaction.atomic():
        findings = _findings(rule, spec, now) if rule.enabled else {}
        unresolved = {
            alert.subject: alert for alert in alerts().filter(rule=rule, state__in=UNRESOLVED)
        }
        new = [subject for subject in findings if subject not in unresolved]
        quiet, announced = _history(rule, new, now) if new else (set(), {})
        unchanged: list[int] = []
        for subject, (finding, context) in findings.items():
            muted = context is not None and context.muted(now)
            alert = unresolved.get(subject)
            if alert is None:
                if not muted and subject not in quiet:
                    _open(rule, spec, finding, now, announced_at=announced.get(subject))
                continue
            if not _refresh(alert, finding, now):
                unchanged.append(alert.pk)
            if not muted and _reminder_due(rule, alert, now):
                _remind(rule, alert, now)
        if unchanged:
            Alert.objects.filter(pk__in=unchanged).update(checked_at=now)
        for subject, alert in unresolved.items():
            if subject not in findings:
                _resolve(rule, spec, alert, now, cleared=rule.enabled)


def _findings(
    rule: AlertRule, spec: RuleSpec, now: datetime
) -> dict[str, tuple[Finding, MachineContext | None]]:
    found: dict[str, Finding] = {}
    for finding in spec.check(rule, now):
        found.setdefault(finding.subject[:100], finding)
    contexts = registry.machine_context(f.tags.get("device") for f in found.values())
    result = {}
    for subject, finding in found.items():
        context = contexts.get(finding.tags.get("device"))
        result[subject] = (replace(finding, tags=_tags(finding, context)), context)
    return result


def _tags(finding: Finding, context: MachineContext | None) -> dict[str, Any]:
    tags = dict(finding.tags)
    if context is not None:
        tags.setdefault("location", context.location)
        tags.setdefault("route", list(context.routes))
    return tags


def _detail(finding: Finding) -> dict[str, Any]:
    detail = dict(finding.detail)
    if finding.action is not None:
        detail["action"] = finding.action
    return detail


def _history(
    rule: AlertRule, subjects: list[str], now: datetime
) -> tuple[set[str], dict[str, datetime]]:
    """Of ``subjects`` (about to open), in one query: those staff resolved by hand within the
    quiet period (not opened again yet), and when each one announced within the cooldown
    was last announced (opened again, but not announced before its cooldown is over)."""
    cooldown = timedelta(minutes=rule.cooldown_minutes)
    quiet_for = cooldown if rule.cooldown_minutes else QUIET_AFTER_MANUAL_RESOLVE
    rows = Alert.objects.filter(
        Q(resolved_by__isnull=False, resolved_at__gt=now - quiet_for)
        | Q(notified_at__gt=now - cooldown),
        rule=rule,
        subject__in=subjects,
        state=AlertState.RESOLVED,
    ).values_list("subject", "resolved_by_id", "resolved_at", "notified_at")
    quiet: set[str] = set()
    announced: dict[str, datetime] = {}
    for subject, resolved_by, resolved_at, notified_at in rows:
        if resolved_by is not None and resolved_at > now - quiet_for:
            quiet.add(subject)
        if rule.cooldown_minutes and notified_at and notified_at > now - cooldown:
            announced[subject] = max(notified_at, announced.get(subject, notified_at))
    return quiet, announced


def _open(
    rule: AlertRule,
    spec: RuleSpec,
    finding: Finding,
    now: datetime,
    *,
    announced_at: datetime | None = None,
) -> Alert | None:
    """Open an alert; announce it unless its subject was announced at ``announced_at``,
    within the cooldown (it counts from then, and the alert starts with no announcement)."""
    alert = Alert(
        rule=rule,
        subject=finding.subject[:100],
        title=finding.title[:200],
        detail=_detail(finding),
        tags=finding.tags,
        severity=rule.severity,
        state=AlertState.OPEN,
        opened_at=now,
        checked_at=now,
        notified_at=announced_at or now,
        notifications=0 if announced_at else 1,
    )
    try:
        with transaction.atomic():  # a savepoint: losing the race undoes this INSERT only
            alert.save(force_insert=True)
    except IntegrityError:
        return None  # another evaluator opened it first and announces it
    if announced_at is None:
        _announce("alert.opened", rule, alert, reminder=False)
    if spec.opened_event:
        emit(
            spec.opened_event,
            _event_data(alert),
            subject=alert.subject,
            tags=_event_tags(rule, alert),
        )
    publish("alert", alert_payload(alert))
    return alert


def _refresh(alert: Alert, finding: Finding, now: datetime) -> bool:
    """Save what changed in the finding's title, detail or tags; False if nothing did (the
    caller stamps ``checked_at`` on all of those in one UPDATE)."""
    title, detail = finding.title[:200], _detail(finding)
    if (alert.title, alert.detail, alert.tags) == (title, detail, finding.tags):
        return False
    alert.title, alert.detail, alert.tags, alert.checked_at = title, detail, finding.tags, now
    Alert.objects.filter(pk=alert.pk).update(
        title=title, detail=detail, tags=finding.tags, checked_at=now
    )
    return True


def _reminder_due(rule: AlertRule, alert: Alert, now: datetime) -> bool:
    """An open alert nobody acknowledged, last announced a cooldown ago or more."""
    if rule.cooldown_minutes <= 0 or alert.state != AlertState.OPEN:
        return False
    last = alert.notified_at or alert.opened_at
    return now - last >= timedelta(minutes=rule.cooldown_minutes)


def _remind(rule: AlertRule, alert: Alert, now: datetime) -> None:
    # Conditional on the announcement we read: of two evaluators, one reminds.
    reminded = Alert.objects.filter(
        pk=alert.pk, state=AlertState.OPEN, notified_at=alert.notified_at
    ).update(notified_at=now, notifications=F("notifications") + 1)
    if not reminded:
        return
    alert.notified_at = now
    alert.notifications += 1
    _announce("alert.opened", rule, alert, reminder=True)
    publish("alert", alert_payload(alert))


def _resolve(rule: AlertRule, spec: RuleSpec, alert: Alert, now: datetime, *, cleared: bool):
    note = CLEARED_NOTE if cleared else DISABLED_NOTE
    resolved = Alert.objects.filter(pk=alert.pk, state__in=UNRESOLVED).update(
        state=AlertState.RESOLVED, resolved_at=now, resolved_by=None, resolution_note=note
    )
    if not resolved:
        return  # resolved meanwhile (by staff, or by another evaluator that announced it)
    alert.state, alert.resolved_at, alert.resolution_note = AlertState.RESOLVED, now, note
    alert.resolved_by = None
    if alert.notifications:  # one opened within its cooldown and never announced stays quiet
        _announce("alert.resolved", rule, alert)
    if cleared and spec.resolved_event:
        emit(
            spec.resolved_event,
            _event_data(alert),
            subject=alert.subject,
            tags=_event_tags(rule, alert),
        )
    publish("alert", alert_payload(alert))


def _event_tags(rule: AlertRule, alert: Alert) -> dict[str, Any]:
    return {**alert.tags, "rule": rule.key}


def _event_data(alert: Alert) -> dict[str, Any]:
    """The data of a rule's own event (``machine.offline``, ``stock.low``…): what the check
    found, and the alert it belongs to."""
    detail = {key: value for key, value in alert.detail.items() if key != "action"}
    return {**detail, "subject": alert.subject, "alert_id": alert.pk}


def _announce(event_type: str, rule: AlertRule, alert: Alert, *, reminder: bool = False):
    data = alert_payload(alert)
    if event_type == "alert.opened":
        data.update(reminder=reminder, count=alert.notifications)
    emit(event_type, data, subject=alert.subject, tags=_event_tags(rule, alert))


def announce_resolved(alert: Alert) -> None:
    """``alert.resolved`` for an alert staff resolved (``vending_site.alerts.services``)."""
    _announce("alert.resolved", alert.rule, alert)
