"""The alert rules the apps register, and what a rule's check returns.

An app registers each of its rules in its ``AppConfig.ready`` (:func:`register`): a key, the
defaults an :class:`~vending_site.alerts.models.AlertRule` row is created with (staff edit the
row afterwards, never the defaults), and a check ``check(rule, now) -> list[Finding]`` that
says for which subjects the condition holds at ``now``. A check reads with a constant number
of queries whatever the fleet's size (aggregates, no query per machine).

The devices app also registers how a machine's tags and maintenance are read
(:func:`register_machine_context`): a finding names its machine (``tags["device"]``) and the
evaluation adds the machine's location and routes, and mutes it while in maintenance.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .models import Severity

if TYPE_CHECKING:
    from .models import AlertRule


@dataclass(frozen=True)
class Finding:
    """A condition that holds now for one subject (``machine:<id>``, ``slot:<pk>``…).

    ``tags`` name what channels filter on: ``device`` (a device id); the evaluation adds
    ``location`` (an id) and ``route`` (a list of ids) for it. ``action`` is what the
    dashboard offers to do about it: ``{"kind": "settle_vend", "transaction_id": …}`` or
    ``{"kind": "approve_machine", "device_id": …}``.
    """

    subject: str
    title: str
    detail: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    action: dict[str, Any] | None = None


Check = Callable[["AlertRule", datetime], list[Finding]]


@dataclass(frozen=True)
class RuleSpec:
    """One registered rule: its defaults, its check, and the events it sends beside
    ``alert.opened`` and ``alert.resolved`` (``machine.offline`` when it opens…)."""

    key: str
    name: str
    check: Check
    description: str = ""
    severity: str = Severity.WARNING
    threshold: int | None = None
    window: int | None = None
    cooldown_minutes: int = 60
    opened_event: str | None = None
    resolved_event: str | None = None
    # Evaluated at most this often (an integrity check that reads every ledger row need
    # not run every ALERT_CHECK_SECONDS); None: on every evaluation.
    every: timedelta | None = None

    def defaults(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "severity": self.severity,
            "threshold": self.threshold,
            "window": self.window,
            "cooldown_minutes": self.cooldown_minutes,
        }


@dataclass(frozen=True)
class MachineContext:
    """What the evaluation needs of a machine a finding names."""

    location: int | None = None
    routes: tuple[int, ...] = ()
    maintenance_until: datetime | None = None

    def muted(self, now: datetime) -> bool:
        return self.maintenance_until is not None and self.maintenance_until > now


MachineContextReader = Callable[[Iterable[str]], dict[str, MachineContext]]

_rules: dict[str, RuleSpec] = {}
_machine_context: MachineContextReader | None = None


def register(spec: RuleSpec) -> None:
    """Register ``spec`` (again: the last registration of a key wins, so a test may swap
    a check)."""
    if len(spec.key) > 40:
        raise ValueError(f"rule key {spec.key!r} is longer than 40 characters")
    _rules[spec.key] = spec


def unregister(key: str) -> RuleSpec | None:
    return _rules.pop(key, None)


def rules() -> dict[str, RuleSpec]:
    """The registered rules by key, in the order they were registered."""
    return dict(_rules)


def get(key: str) -> RuleSpec | None:
    return _rules.get(key)


def register_machine_context(reader: MachineContextReader) -> None:
    """``reader(device_ids)`` returns each known machine's :class:`MachineContext` in a
    constant number of queries (registered by the devices app)."""
    global _machine_context
    _machine_context = reader


def machine_context(device_ids: Iterable[str]) -> dict[str, MachineContext]:
    ids = {device_id for device_id in device_ids if device_id}
    if not ids or _machine_context is None:
        return {}
    return _machine_context(ids)
