"""What staff do with an alert: acknowledge it (someone is on it) or resolve it by hand.

Both lock the alert row, check its state and stamp who and when, in one transaction, and
publish the change to live pages; resolving also sends ``alert.resolved``. Refusals:
:class:`AlertNotFound` (404) and :class:`AlertStateConflict` (409, already acknowledged or
resolved).
"""

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from vending_site.live.events import publish

from .evaluation import announce_resolved
from .exceptions import AlertNotFound, AlertStateConflict
from .models import Alert, AlertState
from .selectors import alert_payload

NOTE_LENGTH = 255


def _locked(alert_id) -> Alert:
    try:
        pk = int(alert_id)
    except (TypeError, ValueError):
        pk = None
    alert = None
    if pk is not None and 0 < pk < 2**63:
        alert = Alert.objects.select_for_update().filter(pk=pk).first()
    if alert is None:
        raise AlertNotFound(f"No alert {str(alert_id)[:20]} exists.")
    return alert


def _refuse_resolved(alert: Alert) -> None:
    if alert.state == AlertState.RESOLVED:
        who = alert.resolved_by.get_username() if alert.resolved_by else "itself"
        raise AlertStateConflict(
            f"Alert {alert.pk} is already resolved (by {who} at "
            f"{alert.resolved_at:%Y-%m-%d %H:%M:%S} UTC).",
            state=alert.state,
        )


def acknowledge(*, alert_id, user, note: str = "", now: datetime | None = None) -> Alert:
    """Mark an open alert acknowledged by ``user``: it stays until resolved, and is no longer
    reminded of. 409 when it is acknowledged or resolved already."""
    with transaction.atomic():
        alert = _locked(alert_id)
        _refuse_resolved(alert)
        if alert.state == AlertState.ACKNOWLEDGED:
            who = alert.acknowledged_by.get_username() if alert.acknowledged_by else "someone"
            raise AlertStateConflict(
                f"Alert {alert.pk} is already acknowledged (by {who}).", state=alert.state
            )
        alert.state = AlertState.ACKNOWLEDGED
        alert.acknowledged_at = now or timezone.now()
        alert.acknowledged_by = user
        alert.acknowledgement_note = (note or "")[:NOTE_LENGTH]
        alert.save(
            update_fields=[
                "state",
                "acknowledged_at",
                "acknowledged_by",
                "acknowledgement_note",
            ]
        )
        publish("alert", alert_payload(alert))
    return alert


def resolve(*, alert_id, user, note: str = "", now: datetime | None = None) -> Alert:
    """Resolve an open or acknowledged alert by hand, recording ``user``; sends
    ``alert.resolved``. If its condition still holds, the rule does not open it again for
    its cooldown (``vending_site.alerts.evaluation``). 409 when it is resolved already."""
    with transaction.atomic():
        alert = _locked(alert_id)
        _refuse_resolved(alert)
        alert.state = AlertState.RESOLVED
        alert.resolved_at = now or timezone.now()
        alert.resolved_by = user
        alert.resolution_note = (note or "")[:NOTE_LENGTH]
        alert.save(update_fields=["state", "resolved_at", "resolved_by", "resolution_note"])
        announce_resolved(alert)
        publish("alert", alert_payload(alert))
    return alert
