"""REST endpoints for vends and their transactions."""

import asyncio
import re
import time

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from transactions import reports
from transactions.api import docs
from transactions.api.throttles import VendThrottle
from transactions.choices import SETTLED_STATES
from transactions.filtersets import TransactionFilterSet
from transactions.models import Transaction
from transactions.services import cancel_vend, request_vend_once
from vending_site.auth import roles
from vending_site.auth.permissions import MayVend, is_staff
from vending_site.auth.roles import requires
from vending_site.http import tables
from vending_site.http.errors import InvalidRequest

from .serializers import TransactionDetailSerializer, TransactionSerializer, VendRequestSerializer

IDEMPOTENCY_HEADER = "Idempotency-Key"
_SLOT_ID = re.compile(r"-?[0-9]{1,6}")
MAX_KEY_LENGTH = 255


def _context(request) -> dict:
    """The serializers' context: staff who may not see money get no prices (a kiosk or an
    API key, never staff, always does)."""
    return {"hide_prices": is_staff(request) and not roles.sees_prices(request.user)}


def _visible_transactions(request: Request, every: str = "transactions.view_transaction"):
    """Everyone's vends for staff holding ``every``; anyone else's own (a vend client's, a
    Driver's or a Technician's: the vends they asked for themselves)."""
    queryset = Transaction.objects.select_related("device")
    # An API key is never staff, whatever its account says.
    if not (is_staff(request) and request.user.has_perm(every)):
        queryset = queryset.filter(requested_by=request.user)
    return queryset


class VendView(APIView):
    """``POST /api/v1/vend/<slot_id>``: reserve a unit and queue the vend; answers 202.

    The body may name ``device_id`` (default: the active device) and ``wait`` seconds.
    """

    permission_classes = (MayVend,)  # staff need devices.operate_device
    throttle_classes = (VendThrottle,)  # stricter than reads

    @docs.VEND
    def post(self, request: Request, slot_id: str) -> Response:
        slot_number = _parse_slot(slot_id)
        if request.data is None or not isinstance(request.data, dict):
            raise InvalidRequest("The body must be a JSON object (it may be empty: {}).")
        params = VendRequestSerializer.read(request.data)
        outcome = request_vend_once(
            user=request.user,
            slot_number=slot_number,
            device_id=params.get("device_id") or None,
            idempotency_key=_idempotency_key(request),
            # `wait` only says how long to hold the answer, not what to vend: a retry may change it.
            asked={name: value for name, value in request.data.items() if name != "wait"},
            status=202,
        )
        response = Response(
            TransactionSerializer(outcome.transaction, context=_context(request)).data,
            status=outcome.status,
        )
        response["Location"] = response.data["links"]["self"]
        if outcome.replayed:
            response["Idempotent-Replayed"] = "true"
        else:
            response.vend_wait = params.get("wait", 0)
        return response


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise InvalidRequest(
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters."
        )
    return key


def _parse_slot(slot_id: str) -> int:
    if not _SLOT_ID.fullmatch(slot_id):
        raise InvalidRequest(f"Slot id {slot_id[:20]!r} is not a whole number.")
    number = int(slot_id)
    if number < 1 or number > 10_000:
        raise InvalidRequest(f"Slot id {number} is out of range; slots are numbered from 1.")
    return number


_sync_vend = VendView.as_view()


@csrf_exempt
async def vend(request: HttpRequest, slot_id: str):
    """Run :class:`VendView`, then, if the client asked to ``wait``, hold the answer until the
    vend settles or the wait runs out, without holding a worker thread meanwhile (ASGI).

    Answers 200 with the settled transaction, or 202 with its state when the wait ran out.
    """
    response = await sync_to_async(_sync_vend)(request, slot_id=slot_id)
    if not _waits(response):
        return response
    state = response.data["state"]
    for pause in _pauses(response.vend_wait):
        if state in SETTLED_STATES:
            break
        await asyncio.sleep(pause)
        state = await _state(response).aget()
    if state != response.data["state"]:
        txn = await Transaction.objects.select_related("device").aget(pk=response.data["id"])
        hidden = {"hide_prices": response.data["product"]["price"] is None}
        response.data = TransactionSerializer(txn, context=hidden).data
    return _settled(response, state)


@csrf_exempt
def vend_sync(request: HttpRequest, slot_id: str):
    """:func:`vend` for a WSGI server (``vending_site.urls_wsgi``): the same answers; a wait
    holds the request's thread, as a WSGI request always does."""
    response = _sync_vend(request, slot_id=slot_id)
    if not _waits(response):
        return response
    state = response.data["state"]
    for pause in _pauses(response.vend_wait):
        if state in SETTLED_STATES:
            break
        time.sleep(pause)
        state = _state(response).get()
    if state != response.data["state"]:
        txn = Transaction.objects.select_related("device").get(pk=response.data["id"])
        hidden = {"hide_prices": response.data["product"]["price"] is None}
        response.data = TransactionSerializer(txn, context=hidden).data
    return _settled(response, state)


def _waits(response) -> bool:
    return response.status_code == 202 and bool(getattr(response, "vend_wait", 0))


def _pauses(wait: float):
    """The pauses of a vend's wait: 50 ms, growing to 250 ms, for ``wait`` seconds in all."""
    deadline = time.monotonic() + wait
    interval = 0.05
    while (left := deadline - time.monotonic()) > 0:
        yield min(interval, left)
        interval = min(interval * 1.5, 0.25)


def _state(response):
    return Transaction.objects.filter(pk=response.data["id"]).values_list("state", flat=True)


def _settled(response, state: str):
    if state in SETTLED_STATES:
        response.status_code = 200
    return response


# The URLs point at the wrappers; these let DRF/drf-spectacular find the view they run.
for _wrapper in (vend, vend_sync):
    _wrapper.cls, _wrapper.initkwargs = _sync_vend.cls, _sync_vend.initkwargs


class TransactionListView(generics.ListAPIView):
    """``GET /api/v1/transactions/``: newest first; staff holding
    ``transactions.view_transaction`` see all, everyone else their own."""

    serializer_class = TransactionSerializer
    filterset_class = TransactionFilterSet

    @docs.TRANSACTION_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), **_context(self.request)}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no database
            return Transaction.objects.none()
        return _visible_transactions(self.request).order_by("-created_at")


class TransactionDetailView(generics.RetrieveAPIView):
    serializer_class = TransactionDetailSerializer

    @docs.TRANSACTION_DETAIL
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), **_context(self.request)}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no database
            return Transaction.objects.none()
        return _visible_transactions(self.request).prefetch_related("events")


class TransactionCancelView(APIView):
    """``POST /api/v1/transactions/<id>/cancel``: cancel a vend not yet delivered (409 after).
    One's own vend; anyone's with ``transactions.change_transaction`` (not a Viewer's)."""

    @docs.TRANSACTION_CANCEL
    def post(self, request: Request, pk: str) -> Response:
        txn = generics.get_object_or_404(
            _visible_transactions(request, "transactions.change_transaction").select_related(
                "slot"
            ),
            pk=pk,
        )
        cancel_vend(txn=txn, user=request.user)
        return Response(TransactionSerializer(txn, context=_context(request)).data)


class SalesReportView(APIView):
    """``GET /api/v1/reports/sales``: sales per machine, product, slot, day or hour over whole
    days (``transactions.reports``), as JSON or, with ``format=csv`` or ``Accept: text/csv``,
    as CSV with a header row."""

    # Staff holding transactions.view_sales (an API key is a vend client, never a reader of money).
    permission_classes = (requires("transactions.view_sales"),)
    content_negotiation_class = tables.JSONOnlyNegotiation

    @docs.SALES_REPORT
    def get(self, request: Request) -> Response | HttpResponse:
        params = request.query_params
        as_csv = tables.wants_csv(request)
        period = reports.parse_period(params.get("from"), params.get("to"))
        group_by = reports.check_group(params.get("group_by"))
        report = reports.sales_report(period=period, group_by=group_by)
        if not as_csv:
            return Response(report)
        name = f"sales-{group_by}-{report['from']}-{report['to']}.csv"
        return tables.csv_response(reports.csv_rows(report), name)
