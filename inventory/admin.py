"""Staff screens for products, slots and the stock ledger.

The admin never writes ``Slot.quantity`` itself: a slot form is saved by
``inventory.services.save_slot_changes``, where a typed quantity becomes an ``adjustment``
ledger row with the staff user and every other field is saved without touching the
quantity, so a vend that took a unit while the form was open is never overwritten.
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import F
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from import_export.admin import ExportMixin, ImportExportMixin

from devices.selectors import machines_visible_to
from vending_site.auth.roles import is_route_bound, sees_prices
from vending_site.http.errors import DomainError

from .exports import (
    EXPORT_FORMATS,
    IMPORT_FORMATS,
    ProductResource,
    StockMovementResource,
)
from .models import PriceChange, Product, Slot, StockMovement
from .selectors import price_of
from .services import restock_to_capacity, save_product_changes, save_slot_changes

# The columns and fields that show money: hidden from whoever does not see prices
# (roles.sees_prices: a Driver, a Technician), read-only without inventory.change_price.
PRICE_COLUMNS = ("price_shown", "price_charged")
PRICE_FIELDS = ("price",)
# Who may type a slot's quantity: a raised one is a restock (roles: not a Technician).
QUANTITY_PERMISSION = "inventory.restock_slot"


def touches_price(lookup: str) -> bool:
    """Whether an admin URL lookup (``price__gte``, ``product__price__lt``) reads a price."""
    return any(part in PRICE_FIELDS for part in lookup.split(LOOKUP_SEP))


class PriceAwareAdmin:
    """Prices only for those who see money; editable only with ``inventory.change_price``."""

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        if sees_prices(request.user):
            return shown
        return [column for column in shown if column not in PRICE_COLUMNS]

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if sees_prices(request.user):
            return fields
        return [field for field in fields if field not in PRICE_FIELDS]

    def get_readonly_fields(self, request, obj=None):
        readonly = tuple(super().get_readonly_fields(request, obj))
        if request.user.has_perm("inventory.change_price"):
            return readonly
        return readonly + tuple(f for f in PRICE_FIELDS if f not in readonly)

    def lookup_allowed(self, lookup, value, request=None):
        # A filter in the URL (?price__gte=2.35) narrows the list and the export to the
        # rows above a threshold: bisected, it tells the price to the cent. Refused (the
        # admin answers 400) for whoever does not see prices. Ordering needs no guard: ?o=
        # indexes the list's columns, and the price columns are not in it for them.
        if request is not None and touches_price(lookup) and not sees_prices(request.user):
            return False
        return super().lookup_allowed(lookup, value, request)


def on_drivers_routes(request, queryset, machine: str):
    """``queryset`` limited to a Driver's routes' machines (``machine`` is the lookup from
    its model to the machine), by the one rule of ``devices.selectors.machines_visible_to``."""
    if not is_route_bound(request.user):
        return queryset
    return queryset.filter(**{f"{machine}__in": machines_visible_to(request.user)})


def money(amount) -> str:
    """A price with the install's currency (``settings.CURRENCY``), or a dash."""
    return "-" if amount is None else f"{amount} {settings.CURRENCY}"


def short_id(value) -> str:
    """A UUID in a list column: its first 8 characters, the whole one in the title (a full
    UUID wrapped over four lines and pushed the transactions list past 1440 px)."""
    if value is None:
        return "-"
    return format_html('<span class="short-id" title="{}">{}</span>', value, str(value)[:8])


class SlotForm(forms.ModelForm):
    """A slot's settings; refuses a quantity above the capacity with a readable message.

    ``may_set_quantity`` is False in the form an admin builds for a user without
    ``inventory.restock_slot``: the quantity is read-only there, and a changed one is
    refused here as well, should the field ever reach the form."""

    may_set_quantity = True

    class Meta:
        model = Slot
        fields = (
            "device",
            "number",
            "product",
            "quantity",
            "capacity",
            "par",
            "low_stock_threshold",
            "price",
            "enabled",
            "needs_attention",
        )

    stock_note = forms.CharField(
        label="Note on a quantity change",
        max_length=200,
        required=False,
        help_text="A raised quantity is recorded as a restock (the units loaded), a lowered one "
        "as an adjustment (a count): say why, or it is noted as a correction in the admin.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "quantity" in self.fields:
            # Compare the posted quantity with the one the page showed, not with the
            # database: a vend while the form was open is not an edit by staff.
            self.fields["quantity"].show_hidden_initial = True

    def clean(self):
        cleaned = super().clean()
        capacity = cleaned.get("capacity")
        if capacity is None:
            return cleaned
        par = cleaned.get("par")
        if par is not None and par > capacity:
            self.add_error(
                "par", f"The PAR ({par}) cannot be above the slot's capacity ({capacity})."
            )
        if "quantity" in self.fields and "quantity" in self.changed_data:
            quantity = cleaned.get("quantity")
            if not self.may_set_quantity:
                self.add_error(
                    "quantity",
                    "Changing a slot's quantity records a restock or a count: it needs the "
                    "restock permission.",
                )
            elif quantity is not None and quantity > capacity:
                self.add_error(
                    "quantity",
                    f"The quantity ({quantity}) cannot exceed the slot's capacity ({capacity}).",
                )
            elif quantity and cleaned.get("product") is None and self._raises(quantity):
                self.add_error(
                    "quantity",
                    "A slot with no product cannot be filled: choose its product first.",
                )
        elif self.instance.pk is not None and "capacity" in self.changed_data:
            # The quantity is not being set, so the capacity must hold what the slot
            # holds now (a vend may have changed it since the form was opened).
            held = Slot.objects.filter(pk=self.instance.pk).values_list("quantity", flat=True)
            current = held.first() or 0
            if current > capacity:
                self.add_error(
                    "capacity",
                    f"The slot holds {current} units; the capacity cannot be less than that.",
                )
        return cleaned

    def _raises(self, quantity: int) -> bool:
        if self.instance.pk is None:
            return True
        held = Slot.objects.filter(pk=self.instance.pk).values_list("quantity", flat=True)
        return quantity > (held.first() or 0)


def slot_form_for(request: HttpRequest, form: type[SlotForm]) -> type[SlotForm]:
    """``form`` as the admin shows it to ``request.user``: the quantity settable only with
    ``inventory.restock_slot`` (shared by the slot page and the device page's inline)."""
    if request.user.has_perm(QUANTITY_PERMISSION):
        return form
    return type(form.__name__, (form,), {"may_set_quantity": False})


def quantity_locked(request: HttpRequest) -> tuple[str, ...]:
    """The slot fields read-only for ``request.user`` beyond the others: the quantity,
    unless they may restock (a raised quantity is a restock ledger row in their name)."""
    return () if request.user.has_perm(QUANTITY_PERMISSION) else ("quantity",)


def stock_badge(slot: Slot) -> str:
    """A coloured ``empty`` / ``low`` / ``ok`` marker for a slot's stock (coloured by
    admin_lists/changelist.css: the CSP refuses style attributes)."""
    label = "empty" if slot.is_empty else "low" if slot.is_low else "ok"
    return format_html('<span class="stock-badge stock-badge--{}">{}</span>', label, label)


class StockLevelFilter(admin.SimpleListFilter):
    title = "stock level"
    parameter_name = "stock"

    def lookups(self, request, model_admin):
        return [("empty", "Empty"), ("low", "Low (not empty)"), ("ok", "OK")]

    def queryset(self, request, queryset):
        low = {"quantity__lte": F("low_stock_threshold")}
        if self.value() == "empty":
            return queryset.filter(quantity=0)
        if self.value() == "low":
            return queryset.filter(**low).exclude(quantity=0)
        if self.value() == "ok":
            return queryset.exclude(**low)
        return queryset


@admin.register(Product)
class ProductAdmin(ImportExportMixin, PriceAwareAdmin, admin.ModelAdmin):
    list_display = ("name", "sku", "price_shown", "created_at")
    # Export: CSV or XLSX of the list as filtered, for whoever may view products (the
    # IMPORT_EXPORT_EXPORT_PERMISSION_CODE setting), prices only for who may see them.
    # Import: CSV with a preview, for who may add and change products and set prices.
    resource_classes = (ProductResource,)
    export_formats = EXPORT_FORMATS
    import_formats = IMPORT_FORMATS
    import_permissions = (
        "inventory.add_product",
        "inventory.change_product",
        "inventory.change_price",
    )
    search_fields = ("name", "sku")
    ordering = ("name",)
    readonly_fields = ("created_at",)

    def get_fields(self, request, obj=None):
        # "Created at" is when the row was made (the model's default): shown on a product,
        # never asked for when adding one.
        fields = super().get_fields(request, obj)
        return fields if obj is not None else [f for f in fields if f != "created_at"]

    @admin.display(description="Price", ordering="price")
    def price_shown(self, obj: Product) -> str:
        return money(obj.price)

    def has_import_permission(self, request) -> bool:
        return request.user.has_perms(self.import_permissions)

    def get_export_resource_kwargs(self, request, **kwargs):
        return {
            **super().get_export_resource_kwargs(request, **kwargs),
            "sees_prices": sees_prices(request.user),
        }

    def save_model(self, request, obj, form, change):
        # A changed price is recorded (PriceChange) by the service, with the staff user.
        save_product_changes(product=obj, changed=form.changed_data, user=request.user)


@admin.register(Slot)
class SlotAdmin(PriceAwareAdmin, admin.ModelAdmin):
    form = SlotForm
    list_display = (
        "device",
        "number",
        "product",
        "stock",
        "par",
        "price_charged",
        "enabled",
        "needs_attention",
    )
    list_display_links = ("device", "number")
    # Only the machines of the listed slots: a Driver's sidebar names no other route's machine.
    list_filter = (
        StockLevelFilter,
        "enabled",
        "needs_attention",
        ("device", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("device", "product")
    search_fields = ("device__device_id", "device__name", "product__name", "product__sku")
    autocomplete_fields = ("product",)
    actions = ("restock_selected",)
    fields = (*SlotForm.Meta.fields, "stock_note")

    def get_queryset(self, request):
        return on_drivers_routes(request, super().get_queryset(request), "device")

    def get_readonly_fields(self, request, obj=None):
        # A slot's history belongs to its place in its machine: that place never moves.
        fixed = ("device", "number") if obj is not None else ()
        # Prices: PriceAwareAdmin (read-only without inventory.change_price).
        return fixed + quantity_locked(request) + tuple(super().get_readonly_fields(request, obj))

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if quantity_locked(request):
            return [field for field in fields if field != "stock_note"]  # notes a quantity
        return fields

    def get_form(self, request, obj=None, **kwargs):
        return slot_form_for(request, super().get_form(request, obj, **kwargs))

    # Quantity, capacity and the marker in one column: three made the list wider than 1440 px.
    @admin.display(description="Stock", ordering="quantity")
    def stock(self, obj: Slot) -> str:
        return format_html(
            '<span class="stock-count">{} / {}</span> {}',
            obj.quantity,
            obj.capacity,
            stock_badge(obj),
        )

    @admin.display(description="Price")
    def price_charged(self, obj: Slot) -> str:
        """What a vend charges; an override of the product's price is marked."""
        if obj.product is None and obj.price is None:
            return "-"
        shown = money(price_of(obj))
        return f"{shown} (slot)" if obj.price is not None else shown

    def save_model(self, request, obj, form, change):
        # A raised quantity is a restock (the restock endpoint's service), a lowered one an
        # adjustment: inventory.services.save_slot_changes decides which.
        note = form.cleaned_data.get("stock_note", "")
        save_slot_changes(
            slot=obj,
            changed=form.changed_data,
            user=request.user,
            note=note or "admin: slot edited",
            adjustment_note=note or "admin: quantity corrected",
        )

    def has_restock_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("inventory.restock_slot")

    @admin.action(description="Restock selected slots to capacity", permissions=["restock"])
    def restock_selected(self, request: HttpRequest, queryset) -> None:
        restocked = units = full = 0
        for slot in queryset.select_related("device"):
            try:
                movement = restock_to_capacity(slot=slot, user=request.user)
            except DomainError as exc:
                self.message_user(request, f"{slot}: {exc.message}", messages.ERROR)
                continue
            if movement is None:
                full += 1
            else:
                restocked += 1
                units += movement.delta
        if restocked:
            self.message_user(
                request,
                f"Restocked {restocked} slot(s) to capacity ({units:+d} units).",
                messages.SUCCESS,
            )
        if full:
            self.message_user(request, f"{full} slot(s) were already full.", messages.INFO)


class ReadOnlyAdminMixin:
    """Rows that are a record of what happened: staff read them, nobody edits them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StockMovement)
class StockMovementAdmin(ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    resource_classes = (StockMovementResource,)
    export_formats = EXPORT_FORMATS
    list_display = (
        "created_at",
        "slot",
        "delta",
        "quantity_after",
        "reason",
        "user",
        "vend",
        "note",
    )
    list_filter = ("reason", "created_at")
    list_select_related = ("slot__device", "user", "transaction")
    search_fields = ("slot__device__device_id", "note", "reason")
    date_hierarchy = "created_at"
    show_full_result_count = False

    def get_queryset(self, request):
        return on_drivers_routes(request, super().get_queryset(request), "slot__device")

    @admin.display(description="Vend", ordering="transaction")
    def vend(self, obj: StockMovement) -> str:
        if obj.transaction_id is None:
            return "-"
        url = reverse("admin:transactions_transaction_change", args=[obj.transaction_id])
        return format_html('<a href="{}">{}</a>', url, short_id(obj.transaction_id))


@admin.register(PriceChange)
class PriceChangeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "product", "slot", "old", "new", "user", "note")
    list_filter = ("created_at",)
    list_select_related = ("product", "slot__device", "user")
    search_fields = ("product__name", "product__sku", "slot__device__device_id")
    date_hierarchy = "created_at"

    @admin.display(description="Old price")
    def old(self, obj: PriceChange) -> str:
        return money(obj.old_price)

    @admin.display(description="New price")
    def new(self, obj: PriceChange) -> str:
        return money(obj.new_price)
