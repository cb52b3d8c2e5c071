"""Alert rules (thresholds staff edit) and the alerts they open."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Severity(models.TextChoices):
    CRITICAL = "critical", "Critical"
    WARNING = "warning", "Warning"
    INFO = "info", "Info"


class AlertState(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class AlertRule(models.Model):
    """One kind of condition, with the thresholds staff may change in the admin.

    ``key`` names the check an app registered (``machine_offline``, ``slot_empty``…); what
    ``threshold`` and ``window`` mean is the rule's own (minutes offline; failures out of the
    last ``window`` vends). A rule that is not enabled opens nothing and resolves what it had
    open.
    """

    key = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    threshold = models.PositiveIntegerField(null=True, blank=True)
    window = models.PositiveIntegerField(null=True, blank=True)
    cooldown_minutes = models.PositiveIntegerField(
        default=60,
        help_text="Remind of an alert still open after this many minutes (0: never remind).",
    )

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.name or self.key


class Alert(models.Model):
    """One condition on one subject, open while it lasts: one alert, not a stream.

    ``subject`` names what it is about (``machine:<device_id>``, ``slot:<pk>``,
    ``vend:<uuid>``, ``service:<name>``, ``endpoint:<pk>``); ``tags`` carry what channels
    filter on (device, location, route). The database keeps at most one alert per rule and
    subject that is not resolved.
    """

    rule = models.ForeignKey(AlertRule, on_delete=models.PROTECT, related_name="alerts")
    subject = models.CharField(max_length=100)
    title = models.CharField(max_length=200)
    detail = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    state = models.CharField(max_length=12, choices=AlertState.choices, default=AlertState.OPEN)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    checked_at = models.DateTimeField(
        default=timezone.now, help_text="When its condition was last seen to hold."
    )
    notified_at = models.DateTimeField(null=True, blank=True)
    notifications = models.PositiveIntegerField(default=0)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    acknowledgement_note = models.CharField(max_length=255, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty when it resolved itself (its condition cleared).",
    )
    resolution_note = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=~Q(state="resolved"),
                name="one_unresolved_alert_per_rule_and_subject",
            )
        ]
        indexes = [models.Index(fields=["state", "opened_at"], name="alert_state_time")]

    def __str__(self) -> str:
        return self.title
