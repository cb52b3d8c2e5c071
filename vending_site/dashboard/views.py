"""The operator dashboard at ``/``: one page, its state as JSON, and the actions it offers.

The page renders from one state document (:func:`dashboard_state`), embedded in the HTML on
first load and fetched again from ``GET /dashboard/api/state`` after a reconnect; live events
from ``/ws/events/`` keep it current in between. Actions are thin: they validate the input and
call the same services the REST API and the admin use, so every rule keeps one owner and every
refusal reaches the page as the service's own message (``{"detail", "code"}``).

Who may look and act is a matter of permissions (``vending_site.auth.roles``): looking needs
``devices.view_device`` (every role), each action its own permission (:data:`ACTIONS`), and
what the page shows beside the machines its own (:data:`READS`: prices, transactions, the
log, the serial ports); a Driver sees only the machines of their routes. With
``DASHBOARD_PUBLIC`` anyone may look at everything, at every machine (so no role sees less
than a visitor who is not logged in); acting still needs the permission.

The feeds filter by machine on the server (``?device=<id>&limit=<n>`` on
``/dashboard/api/transactions`` and ``/dashboard/api/logs``), so choosing a machine shows its
own newest rows rather than the few the browser happened to hold; live events after that are
filtered in the page. The long-running processes report heartbeats
(:mod:`vending_site.processes.heartbeat`), shown under Connections as running, stopped or never
started.
"""

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from devices.approval import accept_address, set_approved
from devices.choices import PortRequest
from devices.models import CommunicationLog, Device, SerialPort
from devices.selectors import get_device, get_visible_device, machines_visible_to
from devices.services import (
    LOG_EVENT_MESSAGE_LIMIT,
    device_payload,
    log_entry_payload,
    request_port,
    select_active_device,
)
from inventory.models import Slot
from transactions.api.serializers import TransactionSerializer
from transactions.choices import TransactionState
from transactions.exceptions import TransactionNotFound
from transactions.lifecycle import transaction_event_payload
from transactions.models import Transaction
from transactions.services import request_vend, resolve_unconfirmed
from vending_site.auth.permissions import lacks
from vending_site.auth.roles import PRICE_READERS, requires, sees_prices
from vending_site.http.errors import DomainError, InvalidRequest, NotFound
from vending_site.live.audience import VIEW_PERMISSION, for_page, machine_scope
from vending_site.models import LiveEvent
from vending_site.processes.heartbeat import services_state, stale_after

from .attention import ACKNOWLEDGE_PERMISSION, attention_feed

FEED_LIMIT = 50
FEED_MAX_LIMIT = 200  # the most rows one feed request returns (the page keeps as many)
CHART_HOURS = 24
DISCOVERY_ENDPOINT = "udp discovery"
CHARTED_STATES = (TransactionState.SUCCEEDED, TransactionState.FAILED)


# The page's own API: the browser's session only. Tokens and API keys belong to /api/v1/;
# and with the session as the only scheme an anonymous POST is a 403 with a message.
PAGE_AUTHENTICATION = [SessionAuthentication]


# What the page offers, and the permission each needs.
ACTIONS = {
    "vend": "devices.operate_device",
    "select": "devices.operate_device",
    "approve": "devices.change_device",
    "ports": "devices.change_serialport",
    "resolve": "transactions.change_transaction",
    "acknowledge": ACKNOWLEDGE_PERMISSION,
}
# What the page shows beside machines and stock, and the permission each needs (unless the
# dashboard is public). Prices follow roles.sees_prices.
READS = {
    "transactions": "transactions.view_transaction",
    "logs": "devices.view_communicationlog",
    "ports": "devices.view_serialport",
}


# How the page names what a role does not allow (its banner).
REFUSED_LABELS = {
    "vend": "vending",
    "select": "choosing the active machine",
    "approve": "approving machines",
    "ports": "steering serial ports",
    "resolve": "settling unconfirmed vends",
    "acknowledge": "acknowledging alerts",
    "show_transactions": "seeing every vend",
    "show_logs": "reading the communication log",
    "show_ports": "seeing serial ports",
}


def refused(user) -> list[tuple[str, str]]:
    """What the page does not offer ``user``, each with the permission it would need."""
    can = abilities(user)
    needs = {**ACTIONS, **{f"show_{name}": perm for name, perm in READS.items()}}
    missing = [(label, needs[key]) for key, label in REFUSED_LABELS.items() if not can[key]]
    if not can["show_prices"]:
        missing.append(("seeing prices", " or ".join(PRICE_READERS)))
    return missing


def _staff_has(user, perm: str) -> bool:
    return bool(user and user.is_authenticated and user.is_staff and user.has_perm(perm))


def may_view(user) -> bool:
    return settings.DASHBOARD_PUBLIC or _staff_has(user, VIEW_PERMISSION)


def abilities(user) -> dict[str, bool]:
    """What ``user`` may do on the page (``ACTIONS``) and see on it (``show_*``)."""
    public = settings.DASHBOARD_PUBLIC
    can = {name: _staff_has(user, perm) for name, perm in ACTIONS.items()}
    for name, perm in READS.items():
        can[f"show_{name}"] = public or _staff_has(user, perm)
    can["show_prices"] = public or bool(user and user.is_staff and sees_prices(user))
    return can


def may_act(user) -> bool:
    return any(_staff_has(user, perm) for perm in ACTIONS.values())


def visible_machines(user):
    """The machines the page shows ``user``: all on a public dashboard, else theirs."""
    return Device.objects.all() if settings.DASHBOARD_PUBLIC else machines_visible_to(user)


def visible_device(raw: str, user) -> Device:
    return get_device(raw) if settings.DASHBOARD_PUBLIC else get_visible_device(raw, user)


class CanViewDashboard(BasePermission):
    message = lacks(VIEW_PERMISSION)

    def has_permission(self, request, view) -> bool:
        return may_view(request.user)


# --- The state document ---------------------------------------------------------------------


def machine_payload(device: Device) -> dict[str, Any]:
    return {
        **device_payload(device),
        "transport_label": device.get_transport_display(),
        "firmware": device.firmware_version,
        "protocol": device.get_protocol_display(),
        "slot_count": device.slot_count,
    }


def slot_payload(slot: Slot, *, prices: bool = True) -> dict[str, Any]:
    product = slot.product
    return {
        "number": slot.number,
        "product": product.name if product else "",
        "sku": product.sku if product else "",
        "price": str(product.price) if product and prices else None,
        "quantity": slot.quantity,
        "capacity": slot.capacity,
        "low_stock_threshold": slot.low_stock_threshold,
        "enabled": slot.enabled,
        "needs_attention": slot.needs_attention,
    }


def port_payload(port: SerialPort) -> dict[str, Any]:
    return {
        "path": port.path,
        "usb_id": port.usb_id,
        "description": port.description,
        "likely_esp32": port.likely_esp32,
        "present": port.present,
        "is_open": port.is_open,
        "device_id": port.device.device_id if port.device else None,
        "requested": port.requested,
        "last_error": port.last_error,
        "reported_at": port.reported_at.isoformat(),
    }


def transaction_payload(txn: Transaction) -> dict[str, Any]:
    """The shape of a ``transaction`` live event, plus when it was created."""
    payload = for_page({"payload": transaction_event_payload(txn)})["payload"]
    return {**payload, "created_at": txn.created_at.isoformat()}


def discovery_payload() -> dict[str, Any]:
    """The discovery listener as the log shows it: it records every request it answers."""
    latest = (
        CommunicationLog.objects.filter(endpoint=DISCOVERY_ENDPOINT)
        .order_by("-created_at", "-id")
        .only("created_at", "remote_addr", "message")
        .first()
    )
    if latest is None:
        return {"last_request_at": None, "last_request_from": "", "message": ""}
    return {
        "last_request_at": latest.created_at.isoformat(),
        "last_request_from": latest.remote_addr,
        "message": latest.message[:LOG_EVENT_MESSAGE_LIMIT],
    }


def vends_per_hour(
    *, now: datetime | None = None, hours: int = CHART_HOURS, devices=None
) -> list[dict]:
    """Succeeded and failed vends per hour (by request time) for the last ``hours`` hours,
    oldest first, every hour present even when nothing happened. The last bucket is the
    current, unfinished hour. One aggregate query; ``devices`` (a queryset) limits it to
    those machines."""
    now = timezone.localtime(now or timezone.now())
    current = now.replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=back) for back in range(hours - 1, -1, -1)]
    buckets = {start: {"succeeded": 0, "failed": 0} for start in starts}
    charted = Transaction.objects.filter(created_at__gte=starts[0], state__in=CHARTED_STATES)
    if devices is not None:
        charted = charted.filter(device__in=devices)
    rows = (
        charted.annotate(hour=TruncHour("created_at"))
        .values("hour", "state")
        .annotate(count=Count("pk"))
        .order_by()
    )
    for row in rows:
        bucket = buckets.get(row["hour"])
        if bucket is not None:  # a row from the future (clock skew) has no bar
            bucket[row["state"]] += row["count"]
    return [{"hour": start.isoformat(), **buckets[start]} for start in starts]


def machines_state(user=None) -> dict[str, Any]:
    """What changes without events of its own (presence, ports, discovery): polled. The
    machines ``user`` may see; the serial ports only with ``devices.view_serialport``."""
    can = abilities(user) if user is not None else None
    ports = SerialPort.objects.select_related("device").order_by("path")
    if can is not None and not can["show_ports"]:
        ports = SerialPort.objects.none()
    machines = visible_machines(user) if user is not None else Device.objects.all()
    return {
        "server_time": timezone.now().isoformat(),
        "machines": [machine_payload(d) for d in machines.order_by("device_id")],
        "ports": [port_payload(p) for p in ports],
        # The listener's last request is a line of the communication log.
        "discovery": (
            discovery_payload()
            if can is None or can["show_logs"]
            else {"last_request_at": None, "last_request_from": "", "message": ""}
        ),
        "services": services_state(),
        "service_stale_after": stale_after(),
    }


def machine_to_open(machines: list[dict[str, Any]]) -> str | None:
    """The machine the page opens on: the default (active) one if it is online, else the
    first online one (a page that opened on a silent machine refused every Vend), else the
    default one, shown offline, else the first."""
    active = next((m for m in machines if m["is_active"]), None)
    online = next((m for m in machines if m["online"]), None)
    chosen = (active if active and active["online"] else None) or online or active
    chosen = chosen or (machines[0] if machines else None)
    return chosen["device_id"] if chosen else None


def dashboard_state(*, user, device: Device | None = None) -> dict[str, Any]:
    """Everything the page shows, in a bounded number of queries whatever the fleet's size.

    ``device`` picks the machine shown, the one the page's Vend buttons vend on; by default
    :func:`machine_to_open`. The ``last_event_id`` is read first, so an event racing this read
    is replayed by the page's catch-up rather than lost.
    """
    last_event_id = LiveEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    state = machines_state(user)
    can = abilities(user)
    device_id = device.device_id if device is not None else machine_to_open(state["machines"])
    slots = (
        Slot.objects.filter(device__device_id=device_id)
        .select_related("product")
        .order_by("number")
        if device_id
        else Slot.objects.none()
    )
    return {
        **state,
        "last_event_id": last_event_id,
        "can_act": may_act(user),
        "can": can,
        "selected": device_id,
        "slots": [slot_payload(s, prices=can["show_prices"]) for s in slots],
        "transactions": transactions_feed(limit=FEED_LIMIT, user=user),
        "logs": logs_feed(limit=FEED_LIMIT, user=user),
        "vends_per_hour": vends_per_hour(devices=visible_machines(user)),
        "feed_limit": FEED_LIMIT,
        "offline_after": settings.DEVICE_OFFLINE_AFTER,
        "alerts": attention_feed(
            user=user,
            machine_ids=None if settings.DASHBOARD_PUBLIC else machine_scope(user),
            public=settings.DASHBOARD_PUBLIC,
        ),
    }


def transactions_feed(
    *, device_id: str | None = None, limit: int = FEED_LIMIT, user=None
) -> list[dict]:
    """The newest ``limit`` transactions, of one machine when ``device_id`` is given; without
    ``transactions.view_transaction``, only the vends ``user`` asked for themselves."""
    rows = Transaction.objects.select_related("device").order_by("-created_at", "-pk")
    if user is not None and not abilities(user)["show_transactions"]:
        rows = rows.filter(requested_by=user) if user.is_authenticated else rows.none()
    if device_id:
        rows = rows.filter(device__device_id=device_id)
    return [transaction_payload(t) for t in rows[:limit]]


def logs_feed(*, device_id: str | None = None, limit: int = FEED_LIMIT, user=None) -> list[dict]:
    """The newest ``limit`` log lines, of one machine when ``device_id`` is given (by the id
    the line names, so lines of a device never registered are found too); none without
    ``devices.view_communicationlog``."""
    if user is not None and not abilities(user)["show_logs"]:
        return []
    rows = CommunicationLog.objects.order_by("-created_at", "-id")
    if device_id:
        rows = rows.filter(device_key=device_id)
    return [log_entry_payload(e) for e in rows[:limit]]


# --- The page ------------------------------------------------------------------------------


@never_cache
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    """``/``: the dashboard. Anonymous visitors are sent to log in unless it is public."""
    if not may_view(request.user):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        raise PermissionDenied(lacks(VIEW_PERMISSION))
    device = None
    raw = request.GET.get("device", "").strip()
    if raw:
        try:
            device = visible_device(raw, request.user)
        except DomainError:
            device = None  # a stale bookmark: show the default machine instead
    return render(
        request,
        "dashboard/index.html",
        {
            "state": dashboard_state(user=request.user, device=device),
            "can_act": may_act(request.user),
            "can": abilities(request.user),
            "refused": refused(request.user),
            "ws_path": "/ws/events/",
        },
    )


# --- JSON endpoints ------------------------------------------------------------------------


@api_view(["GET"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([CanViewDashboard])
def state(request: Request) -> Response:
    """``GET /dashboard/api/state?device=<id>``: the page's state; ``device`` picks the slots."""
    raw = request.query_params.get("device", "").strip()
    device = visible_device(raw, request.user) if raw else None
    response = Response(dashboard_state(user=request.user, device=device))
    response["Cache-Control"] = "no-store"
    return response


@api_view(["GET"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([CanViewDashboard])
def machines(request: Request) -> Response:
    """``GET /dashboard/api/machines``: presence, ports and discovery, polled by the page
    (a machine going quiet raises no event; it only stops being seen)."""
    response = Response(machines_state(request.user))
    response["Cache-Control"] = "no-store"
    return response


class FeedQuerySerializer(serializers.Serializer):
    device = serializers.CharField(max_length=64, required=False, allow_blank=True)
    limit = serializers.IntegerField(
        min_value=1, max_value=FEED_MAX_LIMIT, required=False, default=FEED_LIMIT
    )


def _feed(request: Request, key: str, reader) -> Response:
    query = FeedQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    raw = query.validated_data.get("device", "").strip()
    device_id = visible_device(raw, request.user).device_id if raw else None
    # Read first: an event racing the feed's read is delivered again rather than lost
    # (the page drops rows it already holds by id).
    last_event_id = LiveEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    response = Response(
        {
            "device": device_id,
            "limit": query.validated_data["limit"],
            "last_event_id": last_event_id,
            key: reader(
                device_id=device_id, limit=query.validated_data["limit"], user=request.user
            ),
        }
    )
    response["Cache-Control"] = "no-store"
    return response


@api_view(["GET"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([CanViewDashboard])
def transactions(request: Request) -> Response:
    """``GET /dashboard/api/transactions?device=<id>&limit=<1..200>``: newest first."""
    return _feed(request, "transactions", transactions_feed)


@api_view(["GET"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([CanViewDashboard])
def logs(request: Request) -> Response:
    """``GET /dashboard/api/logs?device=<id>&limit=<1..200>``: the communication log, newest
    first."""
    return _feed(request, "logs", logs_feed)


class ResolveSerializer(serializers.Serializer):
    transaction_id = serializers.UUIDField()
    dispensed = serializers.BooleanField()


@api_view(["POST"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([requires(ACTIONS["resolve"])])
def resolve(request: Request) -> Response:
    """``POST /dashboard/api/transactions/resolve`` with ``{"transaction_id", "dispensed"}``:
    settle an ``unconfirmed`` vend through the admin's service (409 if it is not one). The
    service publishes the change, so every open page updates."""
    data = _valid(ResolveSerializer, request)
    try:
        txn = Transaction.objects.get(pk=data["transaction_id"])
    except Transaction.DoesNotExist:
        raise TransactionNotFound(f"No transaction {data['transaction_id']}.") from None
    txn = resolve_unconfirmed(txn=txn, dispensed=data["dispensed"], user=request.user)
    txn = Transaction.objects.select_related("device").get(pk=txn.pk)
    return Response(transaction_payload(txn))


class VendSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64)
    slot = serializers.IntegerField(min_value=1, max_value=10_000)


@api_view(["POST"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([requires(ACTIONS["vend"])])
def vend(request: Request) -> Response:
    """``POST /dashboard/api/vend`` with ``{"device_id", "slot"}``: the REST vend's service."""
    data = _valid(VendSerializer, request)
    txn = request_vend(
        device=visible_device(data["device_id"], request.user),
        slot_number=data["slot"],
        user=request.user,
    )
    hidden = {"hide_prices": not sees_prices(request.user)}
    return Response(TransactionSerializer(txn, context=hidden).data, status=202)


class SelectSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64)


@api_view(["POST"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([requires(ACTIONS["select"])])
def select_device(request: Request) -> Response:
    """``POST /dashboard/api/machines/select`` with ``{"device_id"}``: make it the active one."""
    data = _valid(SelectSerializer, request)
    device = select_active_device(device=get_device(data["device_id"]))
    return Response(machine_payload(device))


class ApproveSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64)
    address = serializers.IPAddressField()


@api_view(["POST"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([requires(ACTIONS["approve"])])
def approve_device(request: Request) -> Response:
    """``POST /dashboard/api/machines/approve`` with ``{"device_id", "address"}``: admit a
    machine that awaits approval, or accept the address an approved one asks from now, bound
    to ``address`` (the one the page showed; 409 ``address_changed`` when it asks from
    another by now)."""
    data = _valid(ApproveSerializer, request)
    device = get_device(data["device_id"])
    if device.awaiting_approval:
        one = Device.objects.filter(pk=device.pk)
        set_approved(devices=one, approved=True, expected_address=data["address"])
    else:
        accept_address(device=device, expected_address=data["address"])
    device.refresh_from_db()
    return Response(machine_payload(device))


class PortRequestSerializer(serializers.Serializer):
    path = serializers.CharField(max_length=255)
    request = serializers.ChoiceField(choices=PortRequest.choices)


@api_view(["POST"])
@authentication_classes(PAGE_AUTHENTICATION)
@permission_classes([requires(ACTIONS["ports"])])
def port_request(request: Request) -> Response:
    """``POST /dashboard/api/ports/request`` with ``{"path", "request"}``: ask the serial
    bridge to connect, disconnect or decide by itself. Only ports the bridge reported."""
    data = _valid(PortRequestSerializer, request)
    if not SerialPort.objects.filter(path=data["path"]).exists():
        raise NotFound(f"No serial port {data['path']} has been reported by the bridge.")
    port = request_port(path=data["path"], request=PortRequest(data["request"]))
    port = SerialPort.objects.select_related("device").get(pk=port.pk)
    return Response(port_payload(port))


def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    if not isinstance(request.data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
