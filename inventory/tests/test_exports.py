"""The admin's exports (CSV, XLSX: products, the stock ledger, vends), parsed back, and the
product import: a preview with per-row errors that writes nothing until confirmed, prices
recorded; each allowed only to the roles that may."""

import csv
import io
import re
from decimal import Decimal

import openpyxl
import pytest
import tablib
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from devices.models import Location, Route, RouteStop
from inventory.choices import MovementReason
from inventory.exports import ProductResource, StockMovementResource
from inventory.models import PriceChange, Product
from inventory.services import move_stock
from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from transactions.exports import TransactionResource
from transactions.models import Transaction
from vending_site.auth import roles

pytestmark = pytest.mark.django_db

CSV_FORMAT, XLSX_FORMAT = "0", "1"  # the order of inventory.exports.EXPORT_FORMATS


def logged_in(client, role):
    user = staff_with_role(role)
    client.force_login(user)
    return user


def export(client, model: str, resource, file_format: str = CSV_FORMAT, **filters):
    url = reverse(f"admin:{model}_export")
    if filters:
        url += "?" + "&".join(f"{k}={v}" for k, v in filters.items())
    data = {"format": file_format, "resource": "0"}
    for name in resource().get_export_order():
        data[f"{resource.__name__.lower()}_{name}"] = "on"
    return client.post(url, data)


def parsed_csv(response) -> list[dict]:
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


# --- Exports -------------------------------------------------------------------------------


def test_an_operator_exports_products_as_csv_and_it_parses_back(client):
    logged_in(client, roles.OPERATOR)
    ProductFactory(name="Water", sku="W-1", price=Decimal("1.20"))
    ProductFactory(name="Cola", sku="C-1", price=Decimal("2.00"))

    rows = parsed_csv(export(client, "inventory_product", ProductResource))

    assert [(r["sku"], r["name"], r["price"]) for r in rows] == [
        ("C-1", "Cola", "2.00"),
        ("W-1", "Water", "1.20"),
    ]


def test_a_technician_exports_products_without_their_prices(client):
    logged_in(client, roles.TECHNICIAN)
    ProductFactory(name="Water", sku="W-1")

    rows = parsed_csv(export(client, "inventory_product", ProductResource))

    assert [(r["sku"], r["name"]) for r in rows] == [("W-1", "Water")]
    assert "price" not in rows[0]


def test_the_stock_ledger_exports_as_xlsx_as_filtered(client):
    driver = logged_in(client, roles.DRIVER)  # a Driver may view their routes' ledger
    site = Location.objects.create(name="Lobby")
    route = Route.objects.create(name="Monday", driver=driver)
    RouteStop.objects.create(route=route, location=site, position=1)
    elsewhere = SlotFactory(device=DeviceFactory(device_id="ESP32_0000000000E2"), quantity=0)
    move_stock(slot=elsewhere, delta=3, reason=MovementReason.RESTOCK, note="not theirs")
    slot = SlotFactory(
        device=DeviceFactory(device_id="ESP32_0000000000E1", location=site), quantity=0
    )
    move_stock(slot=slot, delta=4, reason=MovementReason.RESTOCK, note="Monday")
    move_stock(slot=slot, delta=-1, reason=MovementReason.ADJUSTMENT, note="count")

    response = export(
        client,
        "inventory_stockmovement",
        StockMovementResource,
        XLSX_FORMAT,
        reason__exact="restock",
    )

    assert response.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    header, *rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert header[:8] == [
        "id",
        "created_at",
        "machine",
        "slot",
        "delta",
        "quantity_after",
        "reason",
        "user",
    ]
    assert [row[2:7] + row[9:] for row in rows] == [
        ["ESP32_0000000000E1", 1, 4, 4, "restock", "Monday"]
    ]


def test_a_viewer_exports_vends_with_their_prices(client, online_device, user):
    logged_in(client, roles.VIEWER)
    slot = online_device.slots.get(number=2)
    Transaction.objects.create(
        device=online_device,
        slot=slot,
        slot_number=2,
        product=slot.product,
        product_name="Product 2",
        product_sku="SKU-2",
        price=Decimal("1.50"),
        state="succeeded",
        requested_by=user,
    )

    rows = parsed_csv(export(client, "transactions_transaction", TransactionResource))

    assert [
        (r["machine"], r["slot_number"], r["product_sku"], r["price"], r["state"]) for r in rows
    ] == [("ESP32_6CC8404FE03C", "2", "SKU-2", "1.50", "succeeded")]
    assert rows[0]["requested_by"] == user.username


# --- Text that a spreadsheet would run as a formula ----------------------------------------

FORMULA = '=HYPERLINK("http://x")'


def xlsx_rows(response) -> list[list]:
    assert response.status_code == 200, response.content[:500]
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    assert not [cell for row in sheet.iter_rows() for cell in row if cell.data_type == "f"]
    return [list(row) for row in sheet.iter_rows(values_only=True)]


def test_a_product_name_that_looks_like_a_formula_is_exported_as_text(client):
    logged_in(client, roles.OPERATOR)
    ProductFactory(name=FORMULA, sku="-W-1", price=Decimal("1.20"))

    csv_rows = parsed_csv(export(client, "inventory_product", ProductResource))
    header, *rows = xlsx_rows(export(client, "inventory_product", ProductResource, XLSX_FORMAT))

    assert [(r["sku"], r["name"], r["price"]) for r in csv_rows] == [
        ("'-W-1", "'" + FORMULA, "1.20")
    ]
    named = dict(zip(header, rows[0], strict=True))
    assert (named["sku"], named["name"]) == ("'-W-1", "'" + FORMULA)


def test_a_planted_ledger_note_is_exported_as_text_and_deltas_stay_numbers(client):
    logged_in(client, roles.OPERATOR)
    slot = SlotFactory(device=DeviceFactory(device_id="ESP32_0000000000E1"), quantity=5)
    move_stock(slot=slot, delta=-2, reason=MovementReason.ADJUSTMENT, note="@SUM(1)")

    csv_rows = parsed_csv(export(client, "inventory_stockmovement", StockMovementResource))
    header, *rows = xlsx_rows(
        export(client, "inventory_stockmovement", StockMovementResource, XLSX_FORMAT)
    )

    assert [(r["delta"], r["quantity_after"], r["note"]) for r in csv_rows] == [
        ("-2", "3", "'@SUM(1)")
    ]
    named = dict(zip(header, rows[0], strict=True))
    assert (named["delta"], named["quantity_after"], named["note"]) == (-2, 3, "'@SUM(1)")


def test_a_vend_of_a_product_named_like_a_formula_is_exported_as_text(client, online_device):
    logged_in(client, roles.OPERATOR)
    slot = online_device.slots.get(number=2)
    Transaction.objects.create(
        device=online_device,
        slot=slot,
        slot_number=2,
        product=slot.product,
        product_name="+1",
        product_sku="SKU-2",
        price=Decimal("1.50"),
        state="succeeded",
    )

    rows = parsed_csv(export(client, "transactions_transaction", TransactionResource))

    assert [(r["product_name"], r["price"], r["slot_number"]) for r in rows] == [
        ("'+1", "1.50", "2")
    ]


@pytest.mark.parametrize(
    ("role", "model"),
    [
        (roles.TECHNICIAN, "transactions_transaction"),
        (roles.DRIVER, "transactions_transaction"),
    ],
)
def test_who_may_not_view_the_rows_may_not_export_them(client, role, model):
    logged_in(client, role)

    response = client.post(reverse(f"admin:{model}_export"), {"format": CSV_FORMAT})

    assert response.status_code == 403


# --- The product import ---------------------------------------------------------------------

GOOD = "sku,name,price\nW-1,Water,1.30\nT-1,Tea,2.10\n"
BAD = "sku,name,price\nW-1,Water,1.30\nB-1,Biscuit,cheap\nT-1,Tea,-1\nW-1,Water again,1.00\n"


def upload(client, text: str):
    return client.post(
        reverse("admin:inventory_product_import"),
        {
            "resource": "0",
            "format": "0",
            "import_file": SimpleUploadedFile("products.csv", text.encode(), "text/csv"),
        },
    )


def test_a_preview_shows_each_bad_row_and_writes_nothing(client):
    logged_in(client, roles.OPERATOR)

    response = upload(client, BAD)

    assert response.status_code == 200
    page = response.content.decode()
    assert "&#x27;cheap&#x27; is not a price (write it as 1.50)." in page  # row 2
    assert "Ensure this value is greater than or equal to 0" in page  # row 3: -1
    assert "The SKU &#x27;W-1&#x27; is already on row 1 of this file." in page  # row 4
    assert "Confirm import" not in page
    assert not Product.objects.exists()
    assert not PriceChange.objects.exists()


def test_a_good_file_is_previewed_then_written_only_once_confirmed_prices_recorded(client):
    operator = logged_in(client, roles.OPERATOR)
    water = ProductFactory(name="Water", sku="W-1", price=Decimal("1.20"))

    preview = upload(client, GOOD)

    assert preview.status_code == 200
    page = preview.content.decode()
    assert "Confirm import" in page
    assert list(Product.objects.values_list("sku", flat=True)) == ["W-1"]
    assert not PriceChange.objects.exists()
    confirm = {
        name: re.search(rf'name="{name}" value="([^"]*)"', page).group(1)
        for name in ("import_file_name", "original_file_name", "format", "resource")
    }

    done = client.post(reverse("admin:inventory_product_process_import"), confirm)

    assert done.status_code == 302
    water.refresh_from_db()
    tea = Product.objects.get(sku="T-1")
    assert (water.price, tea.name, tea.price) == (Decimal("1.30"), "Tea", Decimal("2.10"))
    changes = {
        change.product.sku: (change.old_price, change.new_price, change.user, change.note)
        for change in PriceChange.objects.select_related("product")
    }
    assert changes == {
        "W-1": (Decimal("1.20"), Decimal("1.30"), operator, "imported"),
        "T-1": (None, Decimal("2.10"), operator, "imported"),
    }


@pytest.mark.parametrize("role", [roles.VIEWER, roles.TECHNICIAN, roles.DRIVER])
def test_only_who_may_add_change_and_price_products_may_import(client, role):
    logged_in(client, role)

    assert client.get(reverse("admin:inventory_product_import")).status_code == 403
    assert upload(client, GOOD).status_code == 403
    assert not Product.objects.exists()


def test_an_imported_sku_padded_by_spaces_updates_that_product(client):
    operator = logged_in(client, roles.OPERATOR)
    ProductFactory(name="Water", sku="W-1", price=Decimal("1.20"))
    data = tablib.Dataset(headers=["sku", "name", "price"])
    data.append([" W-1 ", "Water", "1.40"])

    result = ProductResource().import_data(data, dry_run=False, user=operator)

    assert not result.has_errors() and not result.has_validation_errors()
    assert list(Product.objects.values_list("sku", "price")) == [("W-1", Decimal("1.40"))]
