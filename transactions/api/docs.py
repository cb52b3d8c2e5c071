"""The OpenAPI description of the vend endpoints, used as decorators by
``transactions.api.views``; the shared pieces (error answers, the schema class) are
``vending_site.http.openapi``."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)

from vending_site.http.openapi import AUTHENTICATED, errors

from .serializers import TransactionDetailSerializer, TransactionSerializer, VendRequestSerializer

# --- Vends and transactions ---------------------------------------------------------------

VEND = extend_schema(
    tags=["vends"],
    summary="Vend one item from a slot",
    description="Reserves a unit and queues the vend; answers 202 with the transaction. With "
    "`wait` (seconds, up to VEND_MAX_WAIT) the answer is held until the vend settles: 200 "
    "with the settled transaction, or 202 when the wait ran out. Send an `Idempotency-Key` "
    "to make retries safe: a repeat gets the first answer again (`Idempotent-Replayed: "
    "true`).",
    parameters=[
        OpenApiParameter(
            "slot_id",
            {"type": "integer", "minimum": 1, "maximum": 10_000},
            OpenApiParameter.PATH,
            description="1..10000",
        ),
        OpenApiParameter(
            "Idempotency-Key",
            OpenApiTypes.STR,
            OpenApiParameter.HEADER,
            description="1 to 255 printable characters, unique per intended vend.",
        ),
    ],
    request=VendRequestSerializer,
    responses={
        200: OpenApiResponse(TransactionSerializer, description="Settled within `wait`."),
        202: OpenApiResponse(
            TransactionSerializer, description="Queued (or still in flight when `wait` ran out)."
        ),
        **errors(400, *AUTHENTICATED, 404, 409, 422),
    },
    examples=[
        OpenApiExample("the active device", value={}, request_only=True),
        OpenApiExample(
            "a named device, wait up to 5 s",
            value={"device_id": "ESP32_6CC8404FE03C", "wait": 5},
            request_only=True,
        ),
    ],
)
TRANSACTION_CANCEL = extend_schema(
    tags=["vends"],
    summary="Cancel a vend not yet delivered",
    description="409 once the machine has it.",
    parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
    request=None,
    responses={200: TransactionSerializer, **errors(*AUTHENTICATED, 404, 409)},
)
TRANSACTION_LIST = extend_schema(
    tags=["vends"],
    summary="Transactions, newest first (staff: all; others: their own)",
    responses={200: TransactionSerializer(many=True), **errors(400, *AUTHENTICATED)},
)


TRANSACTION_DETAIL = extend_schema(
    tags=["vends"],
    summary="One transaction with its state history",
    parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
    responses={200: TransactionDetailSerializer, **errors(*AUTHENTICATED, 404)},
)
