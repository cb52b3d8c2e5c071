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

from vending_site.http.openapi import AUTHENTICATED, errors

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
