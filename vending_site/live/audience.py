"""Which live events a socket may be sent: the dashboard's rules (``vending_site.dashboard``)
applied to what ``/ws/events/`` pushes, so a role sees live no more than the page shows it.

- Opening the socket needs ``devices.view_device`` (every role), unless ``DASHBOARD_PUBLIC``,
  which shows anyone every event as before.
- ``transaction`` events need ``transactions.view_transaction``; without it a socket gets only
  the vends its user asked for (a Technician's test vends); ``log`` events need
  ``devices.view_communicationlog``, ``ports`` ``devices.view_serialport``, ``command``
  ``devices.view_command``, ``alert`` ``vending_site.view_alert``.
- A Driver gets only the events of the machines of their routes, read when the socket opens
  (a reload picks up a changed route), and no ``alert`` about no machine. The devices app
  registers that reading (:func:`register_machine_scope`): this package knows no app.

Transaction events carry ``requested_by`` (a user id) for this choice; it is removed before
an event leaves the server (:func:`for_page`).
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

VIEW_PERMISSION = "devices.view_device"
EVENT_PERMISSIONS = {
    "transaction": "transactions.view_transaction",
    "log": "devices.view_communicationlog",
    "ports": "devices.view_serialport",
    "command": "devices.view_command",
    "alert": "vending_site.view_alert",
}
PRIVATE_FIELDS = ("requested_by",)
# Kinds a machine-scoped user (a Driver) gets only about their machines: one about no machine
# (an alert on a silent process or a failing webhook) is not theirs, as on the page.
MACHINE_BOUND_KINDS = ("alert",)

# user -> the device ids they may see, or None for every machine (registered by devices).
_machine_scope: Callable[[object], frozenset[str] | None] | None = None


def register_machine_scope(scope: Callable[[object], frozenset[str] | None]) -> None:
    global _machine_scope
    _machine_scope = scope


def machine_scope(user) -> frozenset[str] | None:
    """The device ids ``user`` may see (a Driver's routes), or None for every machine."""
    return _machine_scope(user) if _machine_scope is not None else None


@dataclass(frozen=True)
class Audience:
    everything: bool = False
    kinds: frozenset[str] = frozenset()  # of EVENT_PERMISSIONS: the kinds sent in full
    user_id: int | None = None
    machines: frozenset[str] | None = None  # None: every machine

    def admits(self, event: dict) -> bool:
        if self.everything:
            return True
        kind, payload = event.get("kind"), event.get("payload") or {}
        device_id = payload.get("device_id")
        if self.machines is not None and device_id is not None and device_id not in self.machines:
            return False
        if self.machines is not None and device_id is None and kind in MACHINE_BOUND_KINDS:
            return False
        if kind in EVENT_PERMISSIONS and kind not in self.kinds:
            return kind == "transaction" and payload.get("requested_by") == self.user_id
        return True


def audience_for(user) -> Audience | None:
    """What ``user``'s socket may be sent; None when it may not open at all. Reads the
    database (permissions, a Driver's routes): call it once, when the socket opens."""
    if settings.DASHBOARD_PUBLIC:
        return Audience(everything=True)
    if not (user and user.is_authenticated and user.is_staff and user.has_perm(VIEW_PERMISSION)):
        return None
    kinds = frozenset(kind for kind, perm in EVENT_PERMISSIONS.items() if user.has_perm(perm))
    machines = machine_scope(user)
    return Audience(kinds=kinds, user_id=user.pk, machines=machines)


def for_page(event: dict) -> dict:
    """``event`` without the fields that only choose its audience."""
    payload = event.get("payload")
    if not isinstance(payload, dict) or not any(f in payload for f in PRIVATE_FIELDS):
        return event
    kept = {key: value for key, value in payload.items() if key not in PRIVATE_FIELDS}
    return {**event, "payload": kept}
