"""Staff screens for devices, their commands and the communication log.

Actions call the same services as the REST API (``select_active_device``,
``queue_command``); a refusal from a service becomes an error message, never a 500.
"""

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import Truncator

from inventory.admin import (
    ReadOnlyAdminMixin,
    SlotForm,
    quantity_locked,
    slot_form_for,
    stock_badge,
)
from inventory.models import Slot
from inventory.services import ensure_slots, save_slot_changes
from transactions.commands import queue_command
from vending_site.auth.roles import is_route_bound
from vending_site.http.errors import DomainError

from . import fleet, planogram_admin
from .access import issue_device_token
from .approval import accept_move, set_approved
from .choices import CommandKind, PortRequest
from .models import Command, CommunicationLog, Device, Location, Route, RouteStop, SerialPort
from .protocol import mac_from_device_id
from .selectors import (
    canonical_id,
    locations_visible_to,
    machines_visible_to,
    online_devices,
    routes_visible_to,
)
from .services import request_port, select_active_device

MAINTENANCE = timedelta(hours=2)


class DeviceForm(forms.ModelForm):
    """Stores the canonical spelling of the id, so the firmware's spelling finds the row."""

    class Meta:
        model = Device
        fields = (
            "device_id",
            "name",
            "mac_address",
            "transport",
            "protocol",
            "ip_address",
            "serial_port",
            "firmware_version",
            "slot_count",
            "location",
            "maintenance_until",
        )

    def clean_device_id(self) -> str:
        try:
            return canonical_id(self.cleaned_data["device_id"])
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("device_id") and not cleaned.get("mac_address"):
            cleaned["mac_address"] = mac_from_device_id(cleaned["device_id"])
        return cleaned


class OnlineFilter(admin.SimpleListFilter):
    title = "online"
    parameter_name = "online"

    def lookups(self, request, model_admin):
        return [("yes", "Online"), ("no", "Offline")]

    def queryset(self, request, queryset):
        # The selector owns the rule for "online"; the filter only applies it.
        if self.value() == "yes":
            return queryset.filter(pk__in=online_devices().values("pk"))
        if self.value() == "no":
            return queryset.exclude(pk__in=online_devices().values("pk"))
        return queryset


class SlotInline(admin.TabularInline):
    model = Slot
    form = SlotForm
    fields = (
        "number",
        "product",
        "quantity",
        "capacity",
        "stock",
        "low_stock_threshold",
        "enabled",
        "needs_attention",
    )
    readonly_fields = ("stock",)
    autocomplete_fields = ("product",)
    extra = 0
    ordering = ("number",)
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product")

    def get_readonly_fields(self, request, obj=None):
        # A raised quantity is a restock: typed only by who may restock (not a Technician).
        return (*quantity_locked(request), *super().get_readonly_fields(request, obj))

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.form = slot_form_for(request, formset.form)
        return formset

    @admin.display(description="Stock")
    def stock(self, obj: Slot) -> str:
        return stock_badge(obj) if obj.pk else "-"


# Shown to staff, changed only by the actions (approve, accept the move, revoke, token).
ADMISSION_FIELDS = [
    "admission",
    "approved",
    "approved_at",
    "last_address",
    "bound_address",
    "moved_to",
    "moved_at",
    "has_token",
]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    form = DeviceForm
    inlines = (SlotInline,)
    list_display = (
        "device_id",
        "name",
        "online",
        "is_active",
        "transport",
        "address",
        "location",
        "last_seen",
        "admission",
    )
    list_select_related = ("location",)
    # Only the locations of the listed machines: a Driver's sidebar names no other route's site.
    list_filter = (
        OnlineFilter,
        ("location", admin.RelatedOnlyFieldListFilter),
        "transport",
        "protocol",
        "is_active",
        "approved",
    )
    search_fields = ("device_id", "name", "mac_address")
    actions = (
        "make_active",
        "queue_status",
        "queue_reset",
        "approve",
        "accept_move",
        "revoke_approval",
        "issue_token",
        "copy_planogram_from",
        "mute_alerts",
        "end_maintenance",
    )
    fields = (
        *DeviceForm.Meta.fields,
        "reported_status",
        "is_active",
        "online",
        "last_seen",
        "registered_at",
        *ADMISSION_FIELDS,
    )

    def get_queryset(self, request):
        # A Driver sees the machines of their routes only (devices.selectors).
        queryset = super().get_queryset(request)
        if is_route_bound(request.user):
            queryset = queryset.filter(pk__in=machines_visible_to(request.user).values("pk"))
        return queryset

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.operate_device")

    def get_readonly_fields(self, request, obj=None):
        # The active flag has its own action (the database allows one active device);
        # presence is what the device reports, not what staff type.
        readonly = ["reported_status", "is_active", "online", "last_seen", "registered_at"]
        # Approval and binding have their actions (revoking also expires queued commands);
        # the addresses are what the server saw, not what staff type.
        readonly += ADMISSION_FIELDS
        if obj is not None:
            readonly.insert(0, "device_id")  # the firmware knows the device by it
        return readonly

    @admin.display(description="Online", boolean=True, ordering="last_seen")
    def online(self, obj: Device) -> bool:
        return obj.is_online

    @admin.display(description="Token issued", boolean=True)
    def has_token(self, obj: Device) -> bool:
        return bool(obj.token_hash)

    @admin.display(description="Admission")
    def admission(self, obj: Device) -> str:
        return obj.admission

    @admin.action(
        description="Approve (may receive commands, bound to its last address)",
        permissions=["change"],
    )
    def approve(self, request: HttpRequest, queryset) -> None:
        count = set_approved(devices=queryset, approved=True)
        self.message_user(request, f"{count} device(s) approved.")

    @admin.action(description="Accept the move to its new address", permissions=["change"])
    def accept_move(self, request: HttpRequest, queryset) -> None:
        count = accept_move(devices=queryset)
        self.message_user(request, f"{count} device(s) now served at their new address.")

    @admin.action(description="Revoke approval (no more commands)", permissions=["change"])
    def revoke_approval(self, request: HttpRequest, queryset) -> None:
        count = set_approved(devices=queryset, approved=False)
        note = "" if settings.DEVICE_APPROVAL_REQUIRED else " (DEVICE_APPROVAL_REQUIRED is off)"
        self.message_user(request, f"Approval revoked for {count} device(s){note}.")

    @admin.action(description="Issue a new device token", permissions=["change"])
    def issue_token(self, request: HttpRequest, queryset) -> None:
        devices = list(queryset[:2])
        if len(devices) != 1:
            self.message_user(
                request, "Select exactly one device to issue it a token.", messages.WARNING
            )
            return
        token = issue_device_token(device=devices[0])
        self.message_user(
            request,
            f"Token for {devices[0].device_id} (shown once, only its hash is kept; any earlier "
            f"token no longer works): {token}",
            messages.WARNING,
        )

    @admin.action(description="Mute alerts for 2 hours (maintenance)", permissions=["change"])
    def mute_alerts(self, request: HttpRequest, queryset) -> None:
        until = timezone.now() + MAINTENANCE
        count = fleet.set_maintenance(devices=queryset, until=until)
        self.message_user(request, f"{count} device(s) in maintenance until {until:%H:%M} UTC.")

    @admin.action(description="End maintenance", permissions=["change"])
    def end_maintenance(self, request: HttpRequest, queryset) -> None:
        count = fleet.set_maintenance(devices=queryset, until=None)
        self.message_user(request, f"{count} device(s) out of maintenance.")

    @admin.display(description="Address", ordering="ip_address")
    def address(self, obj: Device) -> str:
        return obj.last_address or obj.ip_address or obj.serial_port or "-"

    def save_formset(self, request, form, formset, change):
        if formset.model is not Slot:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # fills the instances and the change lists for the log
        for slot in formset.deleted_objects:
            slot.delete()
        deleted = set(formset.deleted_forms)
        for slot_form in formset.forms:
            if slot_form in deleted or not slot_form.has_changed():
                continue
            save_slot_changes(
                slot=slot_form.instance,
                changed=slot_form.changed_data,
                user=request.user,
                note="admin: device slots edited",
            )
        return None

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        ensure_slots(device=form.instance, count=form.instance.slot_count)

    @admin.action(description="Copy planogram from…", permissions=["copy_planogram"])
    def copy_planogram_from(self, request: HttpRequest, queryset):
        return planogram_admin.copy_planogram_from(self, request, queryset)

    def has_copy_planogram_permission(self, request) -> bool:
        return request.user.has_perms(planogram_admin.COPY_PERMISSIONS)

    @admin.action(description="Make active device", permissions=["operate"])
    def make_active(self, request: HttpRequest, queryset) -> None:
        devices = list(queryset[:2])
        if len(devices) != 1:
            self.message_user(
                request, "Select exactly one device to make it the active one.", messages.WARNING
            )
            return
        device = select_active_device(device=devices[0])
        self.message_user(request, f"{device.device_id} is now the active device.")

    @admin.action(description="Queue STATUS", permissions=["operate"])
    def queue_status(self, request: HttpRequest, queryset) -> None:
        self._queue(request, queryset, CommandKind.STATUS)

    @admin.action(description="Queue RESET", permissions=["operate"])
    def queue_reset(self, request: HttpRequest, queryset) -> None:
        self._queue(request, queryset, CommandKind.RESET)

    def _queue(self, request: HttpRequest, queryset, kind: CommandKind) -> None:
        queued = []
        for device in queryset:
            try:
                queue_command(device=device, kind=kind)
            except DomainError as exc:
                self.message_user(request, f"{kind} refused: {exc.message}", messages.ERROR)
            else:
                queued.append(device.device_id)
        if queued:
            self.message_user(
                request, f"{kind} queued for {len(queued)} device(s): {', '.join(queued)}."
            )


@admin.register(Command)
class CommandAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "device",
        "kind",
        "slot",
        "state",
        "created_at",
        "sent_at",
        "completed_at",
        "expires_at",
    )
    list_filter = ("state", "kind", "device", "created_at")
    list_select_related = ("device",)
    search_fields = ("device__device_id", "device__name")
    date_hierarchy = "created_at"


@admin.register(CommunicationLog)
class CommunicationLogAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "device_key",
        "direction",
        "transport",
        "endpoint",
        "level",
        "short_message",
    )
    list_filter = ("direction", "transport", "level")
    search_fields = ("message", "device_key")
    date_hierarchy = "created_at"
    # The log grows without bound: skip counting the whole table on every page.
    show_full_result_count = False

    @admin.display(description="Message")
    def short_message(self, obj: CommunicationLog) -> str:
        return Truncator(obj.message).chars(120)


@admin.register(SerialPort)
class SerialPortAdmin(admin.ModelAdmin):
    """The serial ports the bridge reports; staff connect or disconnect them from here."""

    list_display = [
        "path",
        "usb_id",
        "description",
        "likely_esp32",
        "present",
        "is_open",
        "device",
        "requested",
        "last_error",
    ]
    list_filter = ["is_open", "present", "likely_esp32", "requested"]
    actions = ["connect", "disconnect", "automatic"]
    readonly_fields = [f.name for f in SerialPort._meta.fields if f.name != "requested"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # ports are reported by the bridge, not typed in

    @admin.display(description="USB VID:PID")
    def usb_id(self, port: SerialPort) -> str:
        return port.usb_id or "-"

    def _request(self, request: HttpRequest, queryset, wish: PortRequest) -> None:
        for port in queryset:
            request_port(path=port.path, request=wish)
        self.message_user(
            request,
            f"Asked the serial bridge to {wish.label.lower()} {queryset.count()} port(s); "
            "it acts within a second when it is running.",
            messages.SUCCESS,
        )

    @admin.action(description="Connect selected ports", permissions=["change"])
    def connect(self, request: HttpRequest, queryset) -> None:
        self._request(request, queryset, PortRequest.CONNECT)

    @admin.action(description="Disconnect selected ports", permissions=["change"])
    def disconnect(self, request: HttpRequest, queryset) -> None:
        self._request(request, queryset, PortRequest.DISCONNECT)

    @admin.action(
        description="Let the bridge decide (connect ESP32 boards)", permissions=["change"]
    )
    def automatic(self, request: HttpRequest, queryset) -> None:
        self._request(request, queryset, PortRequest.AUTO)


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    """Sites that hold machines; a machine is placed from its own page (its Location)."""

    list_display = ("name", "machine_count", "short_address", "contact")
    search_fields = ("name", "address", "contact", "notes")
    fields = ("name", "address", ("latitude", "longitude"), "contact", "notes", "created_at")
    readonly_fields = ("created_at",)

    def get_queryset(self, request):
        visible = locations_visible_to(request.user).values("pk")
        return (
            super()
            .get_queryset(request)
            .filter(pk__in=visible)
            .annotate(machine_count=Count("machines", distinct=True))
        )

    # The stops after a deleted location move up one place: fleet.delete_location renumbers.
    def delete_model(self, request, obj: Location) -> None:
        fleet.delete_location(location=obj)

    @transaction.atomic
    def delete_queryset(self, request, queryset) -> None:
        for location in queryset.order_by("pk"):
            fleet.delete_location(location=location)

    @admin.display(description="Machines", ordering="machine_count")
    def machine_count(self, obj: Location) -> int:
        return obj.machine_count

    @admin.display(description="Address", ordering="address")
    def short_address(self, obj: Location) -> str:
        return Truncator(" ".join(obj.address.split())).chars(60) or "-"


class RouteStopFormSet(forms.BaseInlineFormSet):
    """Stops are checked among themselves here (a place or a location twice) and saved as a
    whole by ``fleet.save_route``, so swapping two places is one edit, not a clash."""

    def clean(self):
        super().clean()
        positions, locations = set(), set()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or not data.get("location"):
                continue
            if data.get("position") in positions:
                raise forms.ValidationError(f"Two stops are at place {data['position']}.")
            if data["location"].pk in locations:
                raise forms.ValidationError(f"{data['location']} is on the route twice.")
            positions.add(data.get("position"))
            locations.add(data["location"].pk)


class RouteStopForm(forms.ModelForm):
    class Meta:
        model = RouteStop
        fields = ("position", "location")

    def _get_validation_exclusions(self):
        # The formset checks the stops together; the stored ones are replaced on save.
        return {*super()._get_validation_exclusions(), "position", "location"}


class RouteStopInline(admin.TabularInline):
    model = RouteStop
    form = RouteStopForm
    formset = RouteStopFormSet
    fields = ("position", "location")
    ordering = ("position",)
    extra = 1
    autocomplete_fields = ("location",)


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    """A route: its driver (a staff account holding the Driver or Operator role) and its
    stops in the order of visits."""

    list_display = ("name", "driver", "stop_count")
    list_select_related = ("driver",)
    search_fields = ("name", "notes", "driver__username")
    fields = ("name", "driver", "notes", "created_at")
    readonly_fields = ("created_at",)
    inlines = (RouteStopInline,)

    def get_queryset(self, request):
        visible = routes_visible_to(request.user).values("pk")
        return (
            super()
            .get_queryset(request)
            .filter(pk__in=visible)
            .annotate(stop_count=Count("stops", distinct=True))
        )

    @admin.display(description="Stops", ordering="stop_count")
    def stop_count(self, obj: Route) -> int:
        return obj.stop_count

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "driver":
            drivers = Q(groups__name__in=fleet.DRIVING_ROLES) | Q(is_superuser=True)
            kwargs["queryset"] = (
                get_user_model()
                .objects.filter(drivers, is_staff=True, is_active=True)
                .distinct()
                .order_by("username")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_formset(self, request, form, formset, change):
        if formset.model is not RouteStop:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # fills the change lists for the admin's history
        kept = [
            (f.cleaned_data["position"], f.cleaned_data["location"].pk)
            for f in formset.forms
            if getattr(f, "cleaned_data", None)
            and not f.cleaned_data.get("DELETE")
            and f.cleaned_data.get("location")
        ]
        fleet.save_route(route=form.instance, changes={}, stops=[pk for _, pk in sorted(kept)])
        return None
