"""Staff screens for vends: read-only history, and the settling of unconfirmed vends.

A transaction's state changes only through ``transactions.services``; the admin shows the
rows and offers the two staff resolutions as actions.
"""

import uuid

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.html import format_html
from import_export.admin import ExportMixin

from inventory.admin import ReadOnlyAdminMixin, short_id
from inventory.exports import EXPORT_FORMATS
from vending_site.http.errors import DomainError

from .choices import TransactionState
from .exports import TransactionResource
from .models import Transaction, TransactionEvent
from .services import resolve_unconfirmed


class TransactionEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = TransactionEvent
    fields = ("created_at", "from_state", "to_state", "note", "actor")
    readonly_fields = fields
    extra = 0
    ordering = ("created_at", "id")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")


@admin.register(Transaction)
class TransactionAdmin(ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    inlines = (TransactionEventInline,)
    # CSV/XLSX of the list as filtered, for whoever may view transactions (the setting
    # IMPORT_EXPORT_EXPORT_PERMISSION_CODE): the prices charged are in it.
    resource_classes = (TransactionResource,)
    export_formats = EXPORT_FORMATS

    list_display = (
        "id_shown",
        "created_at",
        "device",
        "slot_number",
        "product_name",
        "price",
        "coloured_state",
        "failure_reason",
    )
    list_display_links = ("id_shown",)
    list_filter = ("state", "device", "created_at")
    list_select_related = ("device",)
    search_fields = ("product_name", "product_sku")
    date_hierarchy = "created_at"
    actions = ("mark_dispensed", "refund_not_dispensed")
    fields = (
        "id",
        "state",
        "failure_reason",
        "device",
        "slot",
        "slot_number",
        "product",
        "product_name",
        "product_sku",
        "price",
        "requested_by",
        "created_at",
        "sent_at",
        "unconfirmed_at",
        "completed_at",
        "updated_at",
    )

    @admin.display(description="ID", ordering="id")
    def id_shown(self, obj: Transaction) -> str:
        return short_id(obj.pk)

    @admin.display(description="State", ordering="state")
    def coloured_state(self, obj: Transaction) -> str:
        # Coloured by admin_lists/changelist.css: the CSP refuses style attributes.
        return format_html(
            '<span class="txn-state txn-state--{}">{}</span>', obj.state, obj.get_state_display()
        )

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        # An id is matched whole: a UUID's stored spelling differs between databases,
        # so a substring search on it would find different rows on each.
        try:
            txn_id = uuid.UUID(search_term.strip())
        except ValueError:
            return results, may_have_duplicates
        return results | queryset.filter(pk=txn_id), may_have_duplicates

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("transactions.change_transaction")

    @admin.action(description="Mark unconfirmed as dispensed", permissions=["resolve"])
    def mark_dispensed(self, request: HttpRequest, queryset) -> None:
        self._resolve(request, queryset, dispensed=True)

    @admin.action(description="Refund unconfirmed (not dispensed)", permissions=["resolve"])
    def refund_not_dispensed(self, request: HttpRequest, queryset) -> None:
        self._resolve(request, queryset, dispensed=False)

    def _resolve(self, request: HttpRequest, queryset, *, dispensed: bool) -> None:
        resolved = 0
        skipped = []
        for txn in queryset.select_related("device", "slot"):
            if txn.state != TransactionState.UNCONFIRMED:
                skipped.append(txn)
                continue
            try:
                resolve_unconfirmed(txn=txn, dispensed=dispensed, user=request.user)
            except DomainError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                resolved += 1
        if resolved:
            outcome = "dispensed" if dispensed else "not dispensed and refunded"
            self.message_user(
                request, f"{resolved} unconfirmed vend(s) marked {outcome}.", messages.SUCCESS
            )
        if skipped:
            listed = ", ".join(f"{txn.pk} ({txn.state})" for txn in skipped[:10])
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            self.message_user(
                request,
                f"Skipped {len(skipped)} vend(s) that are not unconfirmed: {listed}{more}.",
                messages.WARNING,
            )
