"""The admin's exports (CSV, XLSX) of products and the stock ledger, and the product import
(CSV, with a preview), through django-import-export.

An imported row is saved by ``inventory.services.save_product_changes``, as an edit in the
admin is: a new product's first price and a changed price are recorded (PriceChange, with
the importing user). Rows are matched on the SKU, spaces around it dropped: a known SKU
updates that product. Exported text cannot start a formula (``safe_cell``).
"""

from decimal import InvalidOperation

from django.core.exceptions import ValidationError
from import_export import fields, resources, widgets
from import_export.formats import base_formats

from vending_site.http.spreadsheet import SafeExportMixin

from .models import Product, StockMovement
from .services import save_product_changes

EXPORT_FORMATS = [base_formats.CSV, base_formats.XLSX]
IMPORT_FORMATS = [base_formats.CSV]


class PriceWidget(widgets.DecimalWidget):
    """A price cell; one that is not a number is that row's error, not the whole file's."""

    def clean(self, value, row=None, **kwargs):
        try:
            return super().clean(value, row, **kwargs)
        except (InvalidOperation, ValueError):
            raise ValueError(f"{str(value)[:20]!r} is not a price (write it as 1.50).") from None


class ProductResource(SafeExportMixin, resources.ModelResource):
    """``sku,name,price``: the columns a product import reads and an export writes (the
    export adds ``id`` and ``created_at``; ``price`` only for those who may see prices)."""

    price = fields.Field(
        attribute="price", column_name="price", widget=PriceWidget(coerce_to_string=True)
    )

    class Meta:
        model = Product
        fields = ("id", "sku", "name", "price", "created_at")
        import_id_fields = ("sku",)
        clean_model_instances = True
        skip_unchanged = True
        report_skipped = True
        use_transactions = True

    def __init__(self, *, sees_prices: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.sees_prices = sees_prices
        self._rows_of_sku: dict[str, int] = {}

    def get_import_fields(self):
        return [f for f in super().get_import_fields() if f.column_name in ("sku", "name", "price")]

    def get_export_fields(self, selected_fields=None):
        exported = super().get_export_fields(selected_fields)
        return exported if self.sees_prices else [f for f in exported if f.column_name != "price"]

    def before_import(self, dataset, **kwargs):
        self._rows_of_sku = {}
        missing = {"sku", "name", "price"} - set(dataset.headers or ())
        if missing:
            raise ValidationError(
                f"The file lacks the column(s) {', '.join(sorted(missing))}: "
                "a product import needs sku, name and price."
            )

    def before_import_row(self, row, **kwargs):
        # A SKU typed as " W-1" names W-1: matched and saved without the spaces, so it
        # updates that product instead of creating a second one.
        if isinstance(row.get("sku"), str):
            row["sku"] = row["sku"].strip()

    def import_instance(self, instance, row, **kwargs):
        sku = (row.get("sku") or "").strip()
        number = kwargs.get("row_number")
        first = self._rows_of_sku.setdefault(sku, number)
        errors = {}
        try:
            super().import_instance(instance, row, **kwargs)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        if sku and first != number:
            errors.setdefault("sku", []).append(
                ValidationError(f"The SKU {sku!r} is already on row {first} of this file.")
            )
        if errors:
            raise ValidationError(errors)

    def save_instance(self, instance, is_create, row, **kwargs):
        # Always through the service, dry run included: the preview runs in a transaction
        # that is rolled back (use_transactions), so it meets the same refusals as the import.
        if is_create:
            changed = ["sku", "name", "price"]
        else:
            before = Product.objects.filter(pk=instance.pk).values("sku", "name", "price").get()
            changed = [name for name, value in before.items() if getattr(instance, name) != value]
        save_product_changes(
            product=instance, changed=changed, user=kwargs.get("user"), note="imported"
        )


class StockMovementResource(SafeExportMixin, resources.ModelResource):
    machine = fields.Field(attribute="slot__device__device_id", column_name="machine")
    slot = fields.Field(
        attribute="slot__number", column_name="slot", widget=widgets.IntegerWidget()
    )
    user = fields.Field(attribute="user__username", column_name="user")
    transaction = fields.Field(attribute="transaction_id", column_name="transaction")

    class Meta:
        model = StockMovement
        fields = (
            "id",
            "created_at",
            "machine",
            "slot",
            "delta",
            "quantity_after",
            "reason",
            "user",
            "transaction",
            "note",
        )
        export_order = fields
