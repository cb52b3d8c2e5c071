"""Staff screens for alert rules (thresholds, cooldown, severity, on or off) and alerts
(read-only, with the actions acknowledge and resolve, which call
``vending_site.alerts.services`` and record who)."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest

from vending_site.auth.roles import is_route_bound
from vending_site.http.errors import DomainError
from vending_site.live.audience import machine_scope

from . import registry, services
from .models import Alert, AlertRule, AlertState


class AlertRuleForm(forms.ModelForm):
    """A threshold or window of 0 means nothing a rule can use: 0 minutes offline finds every
    machine offline, 0 failures every slot failing. Empty keeps the rule's default."""

    class Meta:
        model = AlertRule
        fields = ("enabled", "severity", "threshold", "window", "cooldown_minutes")

    def _at_least_one(self, field: str):
        value = self.cleaned_data.get(field)
        if value is not None and value < 1:
            raise forms.ValidationError("Give at least 1, or leave it empty for the default.")
        return value

    def clean_threshold(self):
        return self._at_least_one("threshold")

    def clean_window(self):
        return self._at_least_one("window")


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    list_display = (
        "key",
        "name",
        "enabled",
        "severity",
        "threshold",
        "window",
        "cooldown_minutes",
        "unresolved",
    )
    list_filter = ("enabled", "severity")
    fields = (
        "key",
        "name",
        "description",
        "enabled",
        "severity",
        "threshold",
        "window",
        "cooldown_minutes",
        "registered",
    )
    readonly_fields = ("key", "registered")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                unresolved_count=Count("alerts", filter=~Q(alerts__state=AlertState.RESOLVED))
            )
        )

    @admin.display(description="Unresolved alerts", ordering="unresolved_count")
    def unresolved(self, obj: AlertRule) -> int:
        return obj.unresolved_count

    @admin.display(description="Registered by an app", boolean=True)
    def registered(self, obj: AlertRule) -> bool:
        return registry.get(obj.key) is not None

    # Rules come from the apps' code: staff tune them, they do not make or delete them.
    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "opened_at",
        "title",
        "rule",
        "severity",
        "state",
        "notifications",
        "acknowledged_by",
        "resolved_at",
        "resolved_by",
    )
    list_filter = ("state", "rule", "severity")
    list_select_related = ("rule", "acknowledged_by", "resolved_by")
    search_fields = ("subject", "title")
    date_hierarchy = "opened_at"
    actions = ("acknowledge", "resolve")

    def get_queryset(self, request):
        # A Driver sees the alerts about the machines of their routes, as on the REST list.
        queryset = super().get_queryset(request)
        if is_route_bound(request.user):
            queryset = queryset.filter(tags__device__in=list(machine_scope(request.user) or ()))
        return queryset

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Alert._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Acknowledge (someone is on it)", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset) -> None:
        self._each(request, queryset, services.acknowledge, "acknowledged")

    @admin.action(description="Resolve", permissions=["change"])
    def resolve(self, request: HttpRequest, queryset) -> None:
        self._each(request, queryset, services.resolve, "resolved")

    def _each(self, request: HttpRequest, queryset, service, done: str) -> None:
        count = 0
        for pk in queryset.values_list("pk", flat=True):
            try:
                service(alert_id=pk, user=request.user)
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
            else:
                count += 1
        if count:
            self.message_user(request, f"{count} alert(s) {done}.")
