"""Staff screens for notifications: endpoints (webhook, e-mail, Apprise) edited with a check
per kind; messages and deliveries as read-only records, with a replay action."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils import timezone

from . import services
from .events import EVENT_TYPES
from .models import Delivery, DeliveryAttempt, Endpoint, EndpointKind, Message
from .scopes import SCOPES, choices_for


class _ReadOnly:
    """Rows that record what happened: staff read them, nobody edits them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class EndpointForm(forms.ModelForm):
    event_types = forms.MultipleChoiceField(
        choices=[(name, f"{name}: {text}") for name, text in EVENT_TYPES.items()],
        widget=forms.CheckboxSelectMultiple,
        help_text="What this endpoint receives.",
    )

    scope_rule = forms.MultipleChoiceField(
        label=SCOPES["rule"],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Only alerts of these rules (and their events); none ticked: every rule.",
    )
    scope_location = forms.MultipleChoiceField(
        label=SCOPES["location"],
        required=False,
        help_text="Only events about machines at these locations; none chosen: everywhere.",
    )
    scope_route = forms.MultipleChoiceField(
        label=SCOPES["route"],
        required=False,
        help_text="Only events about machines on these routes; none chosen: every route.",
    )

    class Meta:
        model = Endpoint
        fields = (
            "name",
            "kind",
            "url",
            "recipients",
            "event_types",
            "scope_rule",
            "scope_location",
            "scope_route",
            "is_active",
        )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        filters = (self.instance.filters or {}) if self.instance.pk else {}
        for tag in SCOPES:
            field = self.fields[f"scope_{tag}"]
            field.choices = choices_for(tag)
            field.initial = filters.get(tag, [])

    def clean(self):
        cleaned = super().clean()
        # The lists staff chose replace their tags; a tag set over REST that the form does
        # not show (``device``) is kept.
        filters = {
            tag: values
            for tag, values in (self.instance.filters or {}).items()
            if tag not in SCOPES
        }
        filters.update(
            {tag: cleaned[f"scope_{tag}"] for tag in SCOPES if cleaned.get(f"scope_{tag}")}
        )
        try:
            self.instance.filters = services.check_filters(filters)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        kind = cleaned.get("kind")
        if kind:
            services.check_endpoint_target(
                kind=kind, url=cleaned.get("url", ""), recipients=cleaned.get("recipients", "")
            )
        return cleaned


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ("name", "kind", "target", "events", "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "url", "recipients")
    readonly_fields = ("signing_secret", "created_by", "created_at", "updated_at")
    actions = ("rotate_secrets",)

    @admin.display(description="Secret")
    def signing_secret(self, endpoint: Endpoint) -> str:
        # Shown once, in the message after adding or rotating (as the REST API does).
        if endpoint.kind != EndpointKind.WEBHOOK:
            return "-"
        return "Shown once, when added or rotated; rotate it to get a new one."

    def _show_secret(self, request: HttpRequest, endpoint: Endpoint) -> None:
        self.message_user(
            request,
            f"Signing secret of {endpoint.name}: {endpoint.secret} (store it now: it is "
            "not shown again).",
            messages.WARNING,
        )

    @admin.display(description="Sends to")
    def target(self, endpoint: Endpoint) -> str:
        text = endpoint.recipients if endpoint.kind == "email" else endpoint.url
        return text if len(text) <= 40 else f"{text[:39]}…"  # a URL does not wrap

    @admin.display(description="Event types")
    def events(self, endpoint: Endpoint) -> str:
        return ", ".join(endpoint.event_types or [])

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            obj.created_by = request.user
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)
        if not change and obj.kind == EndpointKind.WEBHOOK:
            self._show_secret(request, obj)

    def delete_model(self, request, obj) -> None:
        services.delete_endpoint(obj)

    def delete_queryset(self, request, queryset) -> None:
        for endpoint in queryset:
            services.delete_endpoint(endpoint)

    @admin.action(description="Rotate the signing secret (webhooks)", permissions=["change"])
    def rotate_secrets(self, request: HttpRequest, queryset) -> None:
        for endpoint in queryset.filter(kind=EndpointKind.WEBHOOK):
            services.rotate_secret(endpoint)
            self._show_secret(request, endpoint)


@admin.register(Message)
class MessageAdmin(_ReadOnly, admin.ModelAdmin):
    list_display = ("msg_id", "event_type", "subject", "created_at")
    list_filter = ("event_type",)
    search_fields = ("=msg_id", "subject")
    readonly_fields = ("msg_id", "event_type", "subject", "data", "tags", "created_at")
    date_hierarchy = "created_at"


class DeliveryAttemptInline(_ReadOnly, admin.TabularInline):
    model = DeliveryAttempt
    fields = ("started_at", "duration_ms", "status_code", "error", "next_attempt_at", "worker")
    readonly_fields = fields
    extra = 0


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnly, admin.ModelAdmin):
    list_display = (
        "id",
        "event_type",
        "endpoint",
        "state",
        "attempts",
        "last_status",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("state", "endpoint", "message__event_type")
    search_fields = ("=message__msg_id", "message__subject")
    list_select_related = ("message", "endpoint")
    readonly_fields = (
        "message",
        "endpoint",
        "state",
        "attempts",
        "next_attempt_at",
        "claimed_by",
        "claimed_until",
        "last_status",
        "last_error",
        "delivered_at",
        "created_at",
    )
    inlines = (DeliveryAttemptInline,)
    actions = ("replay",)

    @admin.display(description="Event type", ordering="message__event_type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.message.event_type

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("vending_site.change_delivery")

    @admin.action(description="Replay (send again, same webhook-id)", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset) -> None:
        count = 0
        for delivery in queryset:
            services.replay_delivery(delivery)
            count += 1
        self.message_user(
            request,
            f"{count} deliver{'y' if count == 1 else 'ies'} queued again.",
            messages.SUCCESS,
        )
