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
from rest_framework import serializers

from transactions import reports
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


# --- Sales reports ------------------------------------------------------------------------


class SalesFiguresSerializer(serializers.Serializer):
    """Documentation only: one group's (or the totals') figures."""

    vends = serializers.IntegerField(help_text="Succeeded vends.")
    revenue = serializers.DecimalField(
        max_digits=16,
        decimal_places=2,
        coerce_to_string=True,
        help_text="Sum of the prices charged for succeeded vends, in `currency`.",
    )
    failed = serializers.IntegerField()
    unconfirmed = serializers.IntegerField()
    expired = serializers.IntegerField()
    failure_rate = serializers.FloatField(
        allow_null=True, help_text="failed / (vends + failed), 4 places; null when both are 0."
    )


class SalesGroupSerializer(SalesFiguresSerializer):
    """Documentation only: one row; which key fields it has depends on `group_by`."""

    machine = serializers.CharField(required=False, help_text="group_by=machine or slot.")
    machine_name = serializers.CharField(required=False, help_text="group_by=machine.")
    slot = serializers.IntegerField(required=False, help_text="group_by=slot.")
    sku = serializers.CharField(required=False, help_text="group_by=product.")
    product = serializers.CharField(required=False, help_text="group_by=product.")
    day = serializers.DateField(required=False, help_text="group_by=day.")
    hour = serializers.DateTimeField(
        required=False, help_text="group_by=hour: the hour's start, in the server's zone."
    )
    location_id = serializers.IntegerField(
        required=False, allow_null=True, help_text="group_by=location: null for no location."
    )
    location = serializers.CharField(
        required=False, help_text="group_by=location: its name, or `(no location)`."
    )
    route_id = serializers.IntegerField(
        required=False, allow_null=True, help_text="group_by=route: null for no route."
    )
    route = serializers.CharField(
        required=False, help_text="group_by=route: its name, or `(no route)`."
    )
    previous = SalesFiguresSerializer(
        required=False, help_text="Every grouping but day and hour: the previous period."
    )


class PreviousPeriodSerializer(serializers.Serializer):
    """Documentation only."""

    to = serializers.DateField()
    totals = SalesFiguresSerializer()

    def get_fields(self):
        fields = super().get_fields()
        return {"from": serializers.DateField(), **fields}


class SalesReportSerializer(serializers.Serializer):
    """Documentation only: the JSON answer of the sales report."""

    to = serializers.DateField()
    group_by = serializers.ChoiceField(choices=reports.GROUPS)
    time_zone = serializers.CharField(help_text="The server's TIME_ZONE: days and hours are in it.")
    currency = serializers.CharField(help_text="ISO 4217 code of every revenue.")
    rows = SalesGroupSerializer(many=True)
    totals = SalesFiguresSerializer()
    previous = PreviousPeriodSerializer()

    def get_fields(self):
        fields = super().get_fields()
        return {"from": serializers.DateField(), **fields}


_DATE = {"type": "string", "format": "date"}
SALES_REPORT = extend_schema(
    tags=["reports"],
    summary="Sales per machine, product, slot, location, route, day or hour (staff only)",
    description="Whole days in the server's time zone (`time_zone`), `from` and `to` both "
    f"inclusive, at most {reports.MAX_DAYS} days; without them, the last "
    f"{reports.DEFAULT_DAYS} days to today. A vend counts on the day it was asked for. Per "
    "group: succeeded vends and their revenue (the prices charged), failed, unconfirmed and "
    "expired vends and the failure rate; the totals; and the previous period of equal length "
    "(its totals, and per group but for days and hours). Rows come by revenue, highest "
    "first; days and hours in time order, only those with vends. `location` and `route` "
    "group by where each machine stands now (moving a machine moves its history); machines "
    "placed nowhere are `(no location)` / `(no route)`; a location on two routes counts in "
    "both routes' rows, while the totals count each vend once. `format=csv` or "
    "`Accept: text/csv` answers CSV: a header row, then one row per group.",
    parameters=[
        OpenApiParameter("from", _DATE, OpenApiParameter.QUERY, description="YYYY-MM-DD"),
        OpenApiParameter("to", _DATE, OpenApiParameter.QUERY, description="YYYY-MM-DD"),
        OpenApiParameter(
            "group_by",
            {"type": "string", "enum": list(reports.GROUPS), "default": "machine"},
            OpenApiParameter.QUERY,
        ),
        OpenApiParameter(
            "format",
            {"type": "string", "enum": ["json", "csv"], "default": "json"},
            OpenApiParameter.QUERY,
        ),
    ],
    responses={
        (200, "application/json"): SalesReportSerializer,
        (200, "text/csv"): OpenApiResponse(
            {"type": "string"},
            description="A header row (the group's key columns, vends, revenue, failed, "
            "unconfirmed, expired, failure_rate; previous_vends, previous_revenue for "
            "machine, product and slot), then one row per group.",
        ),
        **errors(400, *AUTHENTICATED),
    },
)
