"""The admin's export (CSV, XLSX) of vends, through django-import-export: what was sold,
where, at what price, and how it ended. Exported text cannot start a formula (``safe_cell``)."""

from import_export import fields, resources

from vending_site.http.spreadsheet import SafeExportMixin

from .models import Transaction


class TransactionResource(SafeExportMixin, resources.ModelResource):
    machine = fields.Field(attribute="device__device_id", column_name="machine")
    requested_by = fields.Field(attribute="requested_by__username", column_name="requested_by")

    class Meta:
        model = Transaction
        fields = (
            "id",
            "created_at",
            "machine",
            "slot_number",
            "product_sku",
            "product_name",
            "price",
            "state",
            "failure_reason",
            "requested_by",
            "completed_at",
        )
        export_order = fields
