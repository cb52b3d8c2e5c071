"""The endpoints the deployed ESP32 firmware calls (both WiFi dialects).

The firmware sends no credentials, no cookies and no CSRF token, follows no redirects and
counts only HTTP 200 as an answer; so these views take no authentication, are CSRF-exempt
(DRF views without session authentication are) and live at exact paths without a trailing
slash. They translate bytes to service calls and back; the rules live in the services:
``devices.services`` (registration, check-in), ``transactions.delivery`` (the poll's command)
and ``transactions.confirmation``.
"""

import json

from django.http import HttpResponse
from rest_framework.exceptions import MethodNotAllowed, Throttled
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.access import BrowserRequestRefused, DeviceTokenValid, browser_request_reason
from devices.api import docs
from devices.choices import CommandKind, Direction, LogLevel, Protocol, Transport
from devices.models import Command
from devices.selectors import canonical_id
from devices.services import log_exchange, register_over_wifi
from transactions.confirmation import confirm_vend
from transactions.delivery import poll
from vending_site.backends import outages
from vending_site.http.errors import InvalidRequest
from vending_site.http.network import client_ip
from vending_site.http.throttling import allow_requests
from vending_site.observability import logging as vlog
from vending_site.observability import metrics

from .serializers import DeviceRegistrationSerializer, VendConfirmationSerializer
from .throttles import DeviceAddressThrottle, DeviceThrottle

log = vlog.get_logger(__name__)


class FirstRenderer(BaseContentNegotiation):
    """Always JSON: firmware Accept headers are not to be trusted, and a 406 breaks a machine."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class DeviceEndpoint(APIView):
    serves_firmware = True  # DeviceNetworkMiddleware limits these views to the machines' networks
    content_negotiation_class = FirstRenderer
    authentication_classes = ()
    # Open by default (the firmware sends no credentials); see devices/access.py.
    permission_classes = (DeviceTokenValid,)
    # Per address before the token check (a flood of wrong tokens is limited too); per
    # device after it, so a sender without the token cannot use up a machine's allowance.
    early_throttle_classes = (DeviceAddressThrottle,)
    throttle_classes = (DeviceThrottle,)

    def initial(self, request: Request, *args, **kwargs) -> None:
        # What only a browser sends is refused before the body is even read: a web page on
        # the LAN must not make its visitors' browsers play a machine (devices/access.py).
        self.raw_body = ""
        reason = browser_request_reason(request)
        if reason is not None:
            raise BrowserRequestRefused(
                f"Device endpoints serve the machines' firmware only; this request is refused "
                f"because {reason}."
            )
        method = request.method.lower()
        if method not in self.http_method_names or not hasattr(self, method):
            # Refused before any limit counts it: a HEAD flood must not spend a machine's
            # allowance (finding 4 of the device-trust review).
            raise MethodNotAllowed(request.method)
        # Read the raw body before DRF parses it, so a rejected payload can be logged as sent.
        self.raw_body = request._request.body.decode("utf-8", errors="replace")
        vlog.bind(device_id=self._claimed_id()[:64])  # cleared when the request finishes
        super().initial(request, *args, **kwargs)

    def check_permissions(self, request: Request) -> None:
        # DRF checks permissions first and throttles after. Both limits are counted here, in
        # one cache round trip; the per-device count is taken back when the request is refused
        # before DRF would have counted it (by the address limit or the token check).
        early = [cls() for cls in self.early_throttle_classes]
        late = self.get_throttles()
        refused = allow_requests([*early, *late], request, self)
        early_refused = [throttle for throttle in early if throttle in refused]
        if early_refused:
            for throttle in late:
                throttle.take_back()
            self.throttled(request, max((t.wait() or 0 for t in early_refused), default=None))
        try:
            super().check_permissions(request)
        except Exception:
            for throttle in late:
                throttle.take_back()
            raise
        self._late_refused = [throttle for throttle in late if throttle in refused]

    def check_throttles(self, request: Request) -> None:
        refused = getattr(self, "_late_refused", ())
        if refused:
            self.throttled(request, max((t.wait() or 0 for t in refused), default=None))

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        # A throttled request is not logged: a flood must not become a flood of writes. Nor is
        # one refused because the database is unreachable: the log is in that database.
        if (
            response.status_code >= 400
            and not isinstance(exc, Throttled)
            and outages.unavailable_backend(exc) is None
        ):
            log_exchange(
                limited=True,
                direction=Direction.IN,
                transport=Transport.WIFI,
                device_key=self._claimed_id()[:64],
                endpoint=self.request.path[:100],
                remote_addr=self.remote_addr,
                message=f"rejected ({response.status_code}): {response.data.get('detail')} "
                f"body={self.raw_body[:500]!r}",
                level=LogLevel.ERROR,
            )
        return response

    @property
    def remote_addr(self) -> str:
        # Behind nginx the peer is the proxy; the device is the hop it forwarded for.
        return client_ip(self.request)

    def _claimed_id(self) -> str:
        return str(self.kwargs.get("device_id") or self.request.headers.get("Device-ID") or "")

    def validated(self, serializer_class, request: Request) -> dict:
        """Validate the body; unknown fields are ignored but logged."""
        if not isinstance(request.data, dict):
            raise InvalidRequest("The body must be a JSON object.")
        # A serializer with a `plain` reads the plain bodies itself (no unknown fields there).
        plain = getattr(serializer_class, "plain", None)
        data = plain(request.data) if plain is not None else None
        if data is not None:
            vlog.bind(device_id=str(data.get("device_id", ""))[:64])
            return data
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        vlog.bind(device_id=str(data.get("device_id", ""))[:64])
        unknown = sorted(set(request.data) - set(serializer.fields))
        if unknown:
            log_exchange(
                limited=True,
                direction=Direction.IN,
                transport=Transport.WIFI,
                device_key=str(data.get("device_id", ""))[:64],
                endpoint=request.path,
                remote_addr=self.remote_addr,
                message=f"ignored unknown fields: {', '.join(unknown)[:200]}",
                level=LogLevel.WARNING,
            )
        return data


class RegisterView(DeviceEndpoint):
    """``POST /esp32/register`` (v2.1) and ``POST /esp32/wifi/register`` (documented)."""

    protocol = Protocol.WIFI_V2

    @docs.DEVICE_REGISTER
    def post(self, request: Request) -> Response:
        data = self.validated(DeviceRegistrationSerializer, request)
        device, created = register_over_wifi(
            raw_id=data["device_id"],
            protocol=self.protocol,
            address=self.remote_addr,
            ip_address=data.get("ip_address") or self.remote_addr or None,
            slot_count=data.get("slots_available"),
            firmware_version=data.get("firmware_version", ""),
            reported_status=data.get("status", ""),
        )
        log_exchange(
            limited=True,
            direction=Direction.IN,
            transport=Transport.WIFI,
            device=device,
            endpoint=request.path,
            remote_addr=self.remote_addr,
            message=self.raw_body[:2000],
        )
        return Response(
            {
                "status": "registered",
                "device_id": device.device_id,
                "created": created,
                "slots": device.slot_count,
                "message": f"{device.device_id} registered with {device.slot_count} slots",
            }
        )


class DocumentedRegisterView(RegisterView):
    protocol = Protocol.WIFI_DOCUMENTED


class PollEndpoint(DeviceEndpoint):
    """A poll: answered at once, with the next command or idle."""

    kinds: frozenset[str] | None = None
    # DRF answers HEAD with get(): that would claim a command and drop it with the body.
    http_method_names = ["get", "options"]

    @staticmethod
    def answer(command: Command | None) -> HttpResponse:
        raise NotImplementedError


class PollView(PollEndpoint):
    """``GET /esp32/commands/<device_id>`` (v2.1): ``null`` when idle, else one JSON command.

    Only VEND is delivered here: this firmware ignores every other command.
    """

    kinds = frozenset({CommandKind.VEND})

    @docs.DEVICE_POLL
    def get(self, request: Request, device_id: str) -> HttpResponse:
        metrics.record_poll(dialect=Protocol.WIFI_V2)
        _device, command = poll(
            raw_id=device_id,
            protocol=Protocol.WIFI_V2,
            remote_addr=self.remote_addr,
            kinds=self.kinds,
            endpoint=request.path,
        )
        log.debug("device_poll", delivered=command.pk if command else None)
        return self.answer(command)

    @staticmethod
    def answer(command: Command | None) -> HttpResponse:
        body = json.dumps(command.as_wire()) if command else "null"
        return HttpResponse(body, content_type="application/json")


class DocumentedPollView(PollEndpoint):
    """``GET /esp32/wifi/command`` with a ``Device-ID`` header: ``NO_COMMAND`` when idle."""

    @docs.DEVICE_POLL_DOCUMENTED
    def get(self, request: Request) -> HttpResponse:
        metrics.record_poll(dialect=Protocol.WIFI_DOCUMENTED)
        raw_id = request.headers.get("Device-ID", "")
        if not raw_id.strip():
            raise InvalidRequest("The Device-ID header is missing.")
        _device, command = poll(
            raw_id=raw_id,
            protocol=Protocol.WIFI_DOCUMENTED,
            remote_addr=self.remote_addr,
            endpoint=request.path,
        )
        log.debug("device_poll", delivered=command.pk if command else None)
        return self.answer(command)

    @staticmethod
    def answer(command: Command | None) -> HttpResponse:
        if command is None:
            return HttpResponse("NO_COMMAND", content_type="text/plain")
        return HttpResponse(json.dumps(command.as_wire()), content_type="application/json")


class ConfirmView(DeviceEndpoint):
    """``POST /esp32/confirm`` and ``/esp32/wifi/confirm``: always 200 once the body is valid,
    because the firmware cannot act on an error; what matched (or not) is in the body.

    Not limited per device: a confirmation is the machine's only report of a dispense, one
    per vend, and refusing it would leave the vend ``unconfirmed``. The per-address limit
    still applies."""

    throttle_classes = ()

    @docs.DEVICE_CONFIRM
    def post(self, request: Request) -> Response:
        data = self.validated(VendConfirmationSerializer, request)
        txn = confirm_vend(
            raw_id=data["device_id"],
            slot=data["slot"],
            success=data["success"],
            message=data.get("message", ""),
            device_timestamp=data.get("timestamp"),
            endpoint=request.path,
            remote_addr=self.remote_addr,
            raw_message=self.raw_body[:2000],
        )
        if txn is None:
            return Response(
                {
                    "status": "ignored",
                    "device_id": canonical_id(data["device_id"]),
                    "message": f"no delivered vend awaits confirmation for slot {data['slot']}",
                }
            )
        return Response({"status": "ok", "transaction_id": str(txn.pk), "state": txn.state})
