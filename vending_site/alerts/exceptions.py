"""The alerts' refusals (``vending_site.http.errors`` turns them into 404 and 409)."""

from vending_site.http.errors import DomainError, NotFound


class AlertNotFound(NotFound):
    code = "alert_not_found"


class AlertStateConflict(DomainError):
    """The alert is not in a state the action applies to (already resolved…): 409."""

    code = "alert_state_conflict"
