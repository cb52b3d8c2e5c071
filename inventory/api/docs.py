"""The OpenAPI description of the planogram endpoints (``inventory.api.views``): a machine's
slots, one slot's edit and a restock; and of the pick list (``inventory.api.picklist_views``).
Shared pieces: ``vending_site.http.openapi``."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)

from inventory.choices import MovementReason
from vending_site.http.openapi import AUTHENTICATED, errors

from .catalog_serializers import (
    CatalogProductSerializer,
    PlanogramCopySerializer,
    PlanogramCopyToSerializer,
    ProductWriteSerializer,
    StockMovementSerializer,
)
from .picklist_serializers import PickListSerializer
from .serializers import (
    PlanogramSerializer,
    PlanogramSlotSerializer,
    RestockRequestSerializer,
    SlotUpdateSerializer,
)

_DEVICE = OpenApiParameter(
    "device_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="The machine's id, e.g. `ESP32_6CC8404FE03C`.",
)
_SLOT = OpenApiParameter(
    "number", OpenApiTypes.INT, OpenApiParameter.PATH, description="The slot number (1, 2, ...)."
)

MACHINE_SLOTS = extend_schema(
    tags=["planogram"],
    summary="A machine's slots: product, stock, PAR, price (staff)",
    description="Every slot of the machine in number order: its product, quantity, capacity, "
    "`par` (fill-to level; null means the capacity), `fill_to`, `to_load`, the low-stock "
    "threshold, the `price` a vend charges (the slot's `price_override`, else the product's) "
    "and the install's `currency`.",
    parameters=[_DEVICE],
    responses={200: PlanogramSerializer, **errors(400, *AUTHENTICATED, 404)},
)

MACHINE_SLOT_UPDATE = extend_schema(
    tags=["planogram"],
    summary="Change one slot's product, capacity, PAR, threshold, price or enabled (staff)",
    description="Only the fields sent change. `par` and `price` accept null (the capacity, "
    "the product's price). A changed price is recorded (who, when, old, new). 422 "
    "`planogram_invalid` when the PAR would be above the capacity or the capacity below what "
    "the slot holds; nothing is changed then. The quantity changes only by vends and "
    "restocks.",
    parameters=[_DEVICE, _SLOT],
    request=SlotUpdateSerializer,
    responses={200: PlanogramSlotSerializer, **errors(400, *AUTHENTICATED, 404, 422)},
    examples=[
        OpenApiExample("fill to 8, sell at 1.80", value={"par": 8, "price": "1.80"}),
        OpenApiExample("back to the product's price", value={"price": None}),
    ],
)

MACHINE_RESTOCK = extend_schema(
    tags=["planogram"],
    summary="Record the units loaded into a machine's slots (staff)",
    description="`loaded` maps slot numbers to the units added (partial fills are fine). "
    "Each fill is one `restock` ledger row, all in one database transaction. If any fill "
    "cannot be made (no such slot, no product, units not a whole number above 0, or more "
    "than the slot has room for), the answer is 422 `restock_refused` with `slots` naming "
    "each refused slot and its reason, and nothing is written. Answers the machine's slots "
    "after the fill.",
    parameters=[_DEVICE],
    request=RestockRequestSerializer,
    responses={200: PlanogramSerializer, **errors(400, *AUTHENTICATED, 404, 422)},
    examples=[
        OpenApiExample("two slots", value={"loaded": {"1": 4, "3": 2}, "note": "Monday route"}),
    ],
)


# --- Products, the stock ledger, a planogram copy (inventory.api.catalog_views) -----------

_PRODUCT_ID = OpenApiParameter(
    "id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The product's id."
)
_PRICES = (
    " `price` and `currency` are left out for users who may neither change prices "
    "(`inventory.change_price`) nor read sales (`transactions.view_sales`): a Driver or a "
    "Technician reads products without what they cost."
)

PRODUCT_LIST = extend_schema(
    tags=["products"],
    summary="Products, by name (staff: inventory.view_product)",
    description="Paginated (`limit`, `offset`). `search` keeps the products whose name or SKU "
    "contains it (any case)." + _PRICES,
    parameters=[
        OpenApiParameter(
            "search", OpenApiTypes.STR, description="Part of a name or SKU (at most 100 chars)."
        )
    ],
    responses={200: CatalogProductSerializer(many=True), **errors(400, *AUTHENTICATED)},
)

PRODUCT_CREATE = extend_schema(
    tags=["products"],
    summary="Create a product (staff: inventory.add_product and inventory.change_price)",
    description="Its first price is recorded as a price change (who, when, none -> price). "
    "A SKU another product has is 400 naming it.",
    request=ProductWriteSerializer,
    responses={201: CatalogProductSerializer, **errors(400, *AUTHENTICATED, 409)},
    examples=[
        OpenApiExample("a product", value={"name": "Water 0.5 l", "sku": "W-05", "price": "1.20"})
    ],
)

PRODUCT_READ = extend_schema(
    tags=["products"],
    summary="One product (staff: inventory.view_product)",
    description="One product." + _PRICES,
    parameters=[_PRODUCT_ID],
    responses={200: CatalogProductSerializer, **errors(*AUTHENTICATED, 404)},
)

_UPDATE = (
    "A changed price is recorded (who, when, old, new) and needs `inventory.change_price` "
    "besides `inventory.change_product` (403 otherwise; a price sent unchanged needs nothing "
    "more). A SKU another product has is 400 naming it."
)
PRODUCT_REPLACE = extend_schema(
    tags=["products"],
    summary="Replace a product's name, SKU and price (staff: inventory.change_product)",
    description="All three fields. " + _UPDATE,
    parameters=[_PRODUCT_ID],
    request=ProductWriteSerializer,
    responses={200: CatalogProductSerializer, **errors(400, *AUTHENTICATED, 404, 409)},
)
PRODUCT_UPDATE = extend_schema(
    tags=["products"],
    summary="Change a product's name, SKU or price (staff: inventory.change_product)",
    description="Only the fields sent change. " + _UPDATE,
    parameters=[_PRODUCT_ID],
    request=ProductWriteSerializer(partial=True),
    responses={200: CatalogProductSerializer, **errors(400, *AUTHENTICATED, 404, 409)},
    examples=[OpenApiExample("a new price", value={"price": "1.40"})],
)
PRODUCT_DELETE = extend_schema(
    tags=["products"],
    summary="Delete a product never put to use (staff: inventory.delete_product)",
    description="409 `product_in_use` while a slot holds it (`slots` names each: device id and "
    "slot number) or once its price was changed (its price history is kept). A product no "
    "slot holds whose price never changed is deleted with its first-price record. Sales keep "
    "the name, SKU and price they were made at.",
    parameters=[_PRODUCT_ID],
    responses={204: None, **errors(*AUTHENTICATED, 404, 409)},
)


def _query(name: str, kind, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, kind, OpenApiParameter.QUERY, description=description)


STOCK_MOVEMENTS = extend_schema(
    tags=["stock"],
    summary="The stock ledger, newest first (staff: inventory.view_stockmovement)",
    description="Every change of a slot's quantity: vends, refunds, restocks, adjustments. "
    "Paginated (`limit`, `offset`). A Driver sees only the movements of the machines on the "
    "routes they drive. `from`/`to` are whole days in the server's time zone, both inclusive. "
    "`product` keeps the movements of the slots that hold that product now.",
    parameters=[
        _query("machine", OpenApiTypes.STR, "A device id (any spelling)."),
        _query("slot", OpenApiTypes.INT, "A slot number of `machine` (needs `machine`)."),
        _query("product", OpenApiTypes.INT, "A product id."),
        OpenApiParameter(
            "reason",
            OpenApiTypes.STR,
            OpenApiParameter.QUERY,
            enum=list(MovementReason.values),
            description="One reason.",
        ),
        _query("from", OpenApiTypes.DATE, "First day (YYYY-MM-DD), inclusive."),
        _query("to", OpenApiTypes.DATE, "Last day (YYYY-MM-DD), inclusive."),
    ],
    responses={200: StockMovementSerializer(many=True), **errors(400, *AUTHENTICATED)},
)

PLANOGRAM_COPY = extend_schema(
    tags=["planogram"],
    summary="Copy a machine's planogram onto others (staff: inventory.change_slot and "
    "inventory.change_price)",
    description="Per slot number: product, capacity, PAR, low-stock threshold and price "
    "override (each changed override recorded as a price change); never the quantity. Only "
    "the slots a target has are set: the source's other slot numbers are answered as "
    "`skipped`, a target's slots beyond the source's are left alone. If a target slot holds "
    "more units than the capacity it would get, the answer is 422 `planogram_copy_refused` "
    "with `slots` naming each (device id -> slot -> reason), and nothing is copied. A target "
    "that is the source itself is 400; an unknown one 404.",
    parameters=[_DEVICE],
    request=PlanogramCopyToSerializer,
    responses={200: PlanogramCopySerializer, **errors(400, *AUTHENTICATED, 404, 422)},
    examples=[OpenApiExample("two machines", value={"to": ["ESP32_6CC8404FE03D"]})],
)

_ID = {"type": "integer", "minimum": 1}

PICKLIST = extend_schema(
    tags=["pick lists"],
    summary="What to load per machine and slot, and the van's totals (staff)",
    description="Exactly one of `route` (its machines in stop order), `location`, or "
    "`machine` (repeated; at most 100); none or several kinds is 400, an unknown one (or, for "
    "a Driver, one not on their routes) 404. Per enabled slot holding a product: `quantity`, "
    "`fill_to` (the PAR, else the capacity) and `to_load` = `fill_to - quantity`, never below "
    "0; per product, the van's `totals`. With `visit=YYYY-MM-DD` (today or later, server time "
    "zone) the list forecasts the sales until the visit: `sold_28d` is the net units sold "
    "(vends less refunds) over the 28 days before today, `expected_by_visit` = "
    "`sold_28d / 28` x days until the visit, `at_visit` = `quantity` less the expected sales "
    "rounded up (at least 0), and `to_load` = `fill_to - at_visit`. `format=csv` or "
    "`Accept: text/csv` answers CSV: a header row, the van's rows (`row` = `van`), then one "
    "`slot` row per slot. Needs `inventory.view_slot`.",
    parameters=[
        OpenApiParameter("route", _ID, OpenApiParameter.QUERY, description="A route's id."),
        OpenApiParameter("location", _ID, OpenApiParameter.QUERY, description="A location's id."),
        OpenApiParameter(
            "machine",
            {"type": "array", "items": {"type": "string"}, "maxItems": 100},
            OpenApiParameter.QUERY,
            explode=True,
            description="A machine's id; repeat for more machines.",
        ),
        OpenApiParameter(
            "visit",
            {"type": "string", "format": "date"},
            OpenApiParameter.QUERY,
            description="The visit's date (YYYY-MM-DD), today or later: adds the forecast.",
        ),
        OpenApiParameter(
            "format",
            {"type": "string", "enum": ["json", "csv"], "default": "json"},
            OpenApiParameter.QUERY,
        ),
    ],
    responses={
        (200, "application/json"): PickListSerializer,
        (200, "text/csv"): OpenApiResponse(
            {"type": "string"},
            description="Columns: row, device_id, machine, location, stop, slot, product, "
            "sku, quantity, capacity, fill_to, sold_28d, daily_average, expected_by_visit, "
            "at_visit, to_load.",
        ),
        **errors(400, *AUTHENTICATED, 404),
    },
)
