"""The OpenAPI description of the planogram endpoints (``inventory.api.views``): a machine's
slots, one slot's edit and a restock. Shared pieces: ``vending_site.http.openapi``."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema

from vending_site.http.openapi import AUTHENTICATED, errors

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
