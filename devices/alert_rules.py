"""The machines' alert rules (registered in ``DevicesConfig.ready``) and how the alerts read
a machine's location, routes and maintenance (``vending_site.alerts.registry``).

Each check is one query, whatever the fleet's size.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings

from vending_site.alerts.models import AlertRule, Severity
from vending_site.alerts.registry import Finding, MachineContext, RuleSpec, register

from .access import pending_devices
from .models import Device

OFFLINE_MINUTES = 10


def machine_subject(device_id: str) -> str:
    return f"machine:{device_id}"


def _label(device_id: str, name: str) -> str:
    return f"{name} ({device_id})" if name else device_id


def machines_offline(rule: AlertRule, now: datetime) -> list[Finding]:
    """Approved machines heard from once, not since more than ``threshold`` minutes."""
    minutes = rule.threshold if rule.threshold is not None else OFFLINE_MINUTES
    cutoff = now - timedelta(minutes=minutes)
    rows = Device.objects.filter(
        approved=True, last_seen__isnull=False, last_seen__lt=cutoff
    ).values_list("device_id", "name", "last_seen")
    return [
        Finding(
            subject=machine_subject(device_id),
            title=f"Machine {_label(device_id, name)} is offline",
            detail={"device_id": device_id, "name": name, "last_seen": last_seen.isoformat()},
            tags={"device": device_id},
        )
        for device_id, name, last_seen in rows
    ]


def machines_awaiting_approval(rule: AlertRule, now: datetime) -> list[Finding]:
    """WiFi machines that announced themselves and wait for staff approval."""
    if not settings.DEVICE_APPROVAL_REQUIRED:
        return []
    rows = pending_devices().values_list("device_id", "name", "last_address")
    return [
        Finding(
            subject=machine_subject(device_id),
            title=f"Machine {_label(device_id, name)} awaits approval",
            detail={"device_id": device_id, "name": name, "address": address},
            tags={"device": device_id},
            action={"kind": "approve_machine", "device_id": device_id},
        )
        for device_id, name, address in rows
    ]


def machine_context(device_ids: Iterable[str]) -> dict[str, MachineContext]:
    """Each machine's location, the routes that stop there and its maintenance, in one
    query (a row per route stop)."""
    found: dict[str, tuple[int | None, list[int], datetime | None]] = {}
    rows = Device.objects.filter(device_id__in=list(device_ids)).values_list(
        "device_id", "location_id", "maintenance_until", "location__stops__route_id"
    )
    for device_id, location, until, route in rows:
        _location, routes, _until = found.setdefault(device_id, (location, [], until))
        if route is not None and route not in routes:
            routes.append(route)
    return {
        device_id: MachineContext(
            location=location, routes=tuple(sorted(routes)), maintenance_until=until
        )
        for device_id, (location, routes, until) in found.items()
    }


RULES = (
    RuleSpec(
        key="machine_offline",
        name="Machine offline",
        description="An approved machine that was heard from once has not been for more "
        "than `threshold` minutes. Sends machine.offline when it opens and machine.online "
        "when the machine is heard again.",
        check=machines_offline,
        severity=Severity.WARNING,
        threshold=OFFLINE_MINUTES,
        cooldown_minutes=60,
        opened_event="machine.offline",
        resolved_event="machine.online",
    ),
    RuleSpec(
        key="machine_awaiting_approval",
        name="Machine awaiting approval",
        description="A WiFi machine announced itself and waits for staff to approve it "
        "(DEVICE_APPROVAL_REQUIRED).",
        check=machines_awaiting_approval,
        severity=Severity.INFO,
        cooldown_minutes=0,
    ),
)


def register_rules() -> None:
    for spec in RULES:
        register(spec)
