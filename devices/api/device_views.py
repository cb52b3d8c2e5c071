"""The endpoints the deployed ESP32 firmware calls (both WiFi dialects).

The firmware sends no credentials, no cookies and no CSRF token, follows no redirects and
counts only HTTP 200 as an answer; so these views take no authentication, are CSRF-exempt
(DRF views without session authentication are) and live at exact paths without a trailing
slash. They translate bytes to service calls and back; the rules live in ``devices.services``.
"""

import json

from django.http import HttpResponse
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.choices import CommandKind, Direction, LogLevel, Protocol, Transport
from devices.selectors import canonical_id
from devices.services import confirm_vend, log_exchange, poll, register_device
from vending_site.errors import InvalidRequest

from .serializers import DeviceRegistrationSerializer, VendConfirmationSerializer


class FirstRenderer(BaseContentNegotiation):
    """Always JSON: firmware Accept headers are not to be trusted, and a 406 breaks a machine."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class DeviceEndpoint(APIView):
    content_negotiation_class = FirstRenderer
    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = ()

    def initial(self, request: Request, *args, **kwargs) -> None:
        # Read the raw body before DRF parses it, so a rejected payload can be logged as sent.
        self.raw_body = request._request.body.decode("utf-8", errors="replace")
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if response.status_code >= 400:
            log_exchange(
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
        return self.request.META.get("REMOTE_ADDR", "")

    def _claimed_id(self) -> str:
        return str(self.kwargs.get("device_id") or self.request.headers.get("Device-ID") or "")

    def validated(self, serializer_class, request: Request) -> dict:
        """Validate the body; unknown fields are ignored but logged."""
        if not isinstance(request.data, dict):
            raise InvalidRequest("The body must be a JSON object.")
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        unknown = sorted(set(request.data) - set(serializer.fields))
        if unknown:
            log_exchange(
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

    def post(self, request: Request) -> Response:
        data = self.validated(DeviceRegistrationSerializer, request)
        device, created = register_device(
            raw_id=data["device_id"],
            transport=Transport.WIFI,
            protocol=self.protocol,
            ip_address=data.get("ip_address") or self.remote_addr or None,
            slot_count=data.get("slots_available"),
            firmware_version=data.get("firmware_version", ""),
            reported_status=data.get("status", ""),
        )
        log_exchange(
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


class PollView(DeviceEndpoint):
    """``GET /esp32/commands/<device_id>`` (v2.1): ``null`` when idle, else one JSON command.

    Only VEND is delivered here: this firmware ignores every other command.
    """

    kinds = frozenset({CommandKind.VEND})
    # DRF answers HEAD with get(): that would claim a command and drop it with the body.
    http_method_names = ["get", "options"]

    def get(self, request: Request, device_id: str) -> HttpResponse:
        _device, command = poll(
            raw_id=device_id,
            protocol=Protocol.WIFI_V2,
            remote_addr=self.remote_addr,
            kinds=self.kinds,
            endpoint=request.path,
        )
        body = json.dumps(command.as_wire()) if command else "null"
        return HttpResponse(body, content_type="application/json")


class DocumentedPollView(DeviceEndpoint):
    """``GET /esp32/wifi/command`` with a ``Device-ID`` header: ``NO_COMMAND`` when idle."""

    http_method_names = ["get", "options"]

    def get(self, request: Request) -> HttpResponse:
        raw_id = request.headers.get("Device-ID", "")
        if not raw_id.strip():
            raise InvalidRequest("The Device-ID header is missing.")
        _device, command = poll(
            raw_id=raw_id,
            protocol=Protocol.WIFI_DOCUMENTED,
            remote_addr=self.remote_addr,
            endpoint=request.path,
        )
        if command is None:
            return HttpResponse("NO_COMMAND", content_type="text/plain")
        return HttpResponse(json.dumps(command.as_wire()), content_type="application/json")


class ConfirmView(DeviceEndpoint):
    """``POST /esp32/confirm`` and ``/esp32/wifi/confirm``: always 200 once the body is valid,
    because the firmware cannot act on an error; what matched (or not) is in the body."""

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
