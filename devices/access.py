"""Who may talk to the device endpoints, and which devices may receive commands.

The deployed firmware sends no credentials, so by default every device endpoint is open.
An operator can close it in three independent ways (all off by default):

- ``DEVICE_ALLOWED_NETWORKS``: device HTTP endpoints and UDP discovery answer only senders
  inside these networks. Others get 403 over HTTP (before anything is parsed, recorded or
  claimed) and silence over UDP. The address is the client's, through ``TRUSTED_PROXIES``
  (see ``vending_site.network``).
- ``DEVICE_APPROVAL_REQUIRED``: a new WiFi device registers and polls (it is listed, its
  ``last_seen`` moves) but no command can be queued for it until staff approve it; a vend
  for it is 409 ``device_not_approved``. A device on a USB serial link needs no approval:
  someone plugged its cable into this server, which is the approval.
- ``DEVICE_TOKEN_REQUIRED``: every device request carries ``X-Device-Token``, the token
  issued for that device (``manage.py issue_device_token`` or the admin action). Only its
  SHA-256 is stored; a check is one hash and a constant-time compare, no password hashing,
  so the 2-second poll stays cheap. For future firmware: today's firmware sends no header.

The firmware treats any status but 200 as "no answer" and retries on its schedule, so a
refused device simply never gets work; nothing on it breaks.
"""

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.utils.deprecation import MiddlewareMixin
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from vending_site.errors import DomainError
from vending_site.network import client_ip, in_networks

TOKEN_HEADER = "X-Device-Token"


class DeviceNotApproved(DomainError):
    code = "device_not_approved"


def claimed_device_ids(request, view=None) -> list[str]:
    """Every device id a request names: the URL (v2.1 poll), the ``Device-ID`` header
    (documented poll) and, for a POST, the JSON body (register, confirm act on that one)."""
    named = [
        (getattr(view, "kwargs", None) or {}).get("device_id"),
        request.headers.get("Device-ID"),
    ]
    if request.method == "POST":
        data = request.data
        if isinstance(data, dict):
            named.append(data.get("device_id"))
    return [str(claimed)[:200] for claimed in named if claimed]


def claimed_device_id(request, view=None) -> str:
    """The first device id the request names (see :func:`claimed_device_ids`), or ``""``."""
    claimed = claimed_device_ids(request, view)
    return claimed[0] if claimed else ""


# --- Networks ------------------------------------------------------------------------------


def device_network_allowed(address: str) -> bool:
    """Whether a device at ``address`` may be served (always, with no networks listed)."""
    networks = settings.DEVICE_ALLOWED_NETWORKS
    return not networks or in_networks(address, networks)


class DeviceNetworkMiddleware(MiddlewareMixin):
    """Refuses device endpoints to senders outside ``DEVICE_ALLOWED_NETWORKS``.

    A middleware, not a DRF permission, so that the refusal happens before the view reads
    the body, registers a device or writes the communication log: a stranger leaves no trace
    but a log line in the web server.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not settings.DEVICE_ALLOWED_NETWORKS:
            return None
        from devices.api.device_views import DeviceEndpoint

        view_class = getattr(view_func, "view_class", None)
        if not (isinstance(view_class, type) and issubclass(view_class, DeviceEndpoint)):
            return None
        address = client_ip(request)
        if device_network_allowed(address):
            return None
        return JsonResponse(
            {
                "detail": f"Device endpoints are not open to {address or 'this address'}.",
                "code": "network_not_allowed",
            },
            status=403,
        )


# --- Approval ------------------------------------------------------------------------------


def approval_message(device) -> str:
    return (
        f"{device.device_id} is waiting for staff approval (DEVICE_APPROVAL_REQUIRED); "
        "it receives no commands until it is approved."
    )


def set_approved(*, devices, approved: bool) -> int:
    """Approve or revoke ``devices`` (a queryset). Revoking also expires their queued
    commands (returning any reserved unit), so nothing waiting is delivered later."""
    from .choices import CommandState
    from .models import Command, Device
    from .services import expire_command

    # The ids first: ``devices`` may be filtered on ``approved`` itself (the admin's list
    # filter), and would match nothing once updated.
    pks = list(devices.values_list("pk", flat=True))
    with transaction.atomic():
        changed = Device.objects.filter(pk__in=pks).update(approved=approved)
        if not approved:
            queued = Command.objects.filter(device__in=pks, state=CommandState.QUEUED)
            for command_id in list(queued.values_list("pk", flat=True)):
                expire_command(command_id=command_id)
    return changed


# --- Tokens --------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


def issue_device_token(*, device) -> str:
    """A new random token (256 bits) for ``device``; only its hash is kept, so the caller
    must show it now. Any earlier token stops working."""
    token = secrets.token_urlsafe(32)
    type(device).objects.filter(pk=device.pk).update(token_hash=hash_token(token))
    device.token_hash = hash_token(token)
    return token


def token_matches(token: str, stored_hash: str) -> bool:
    if not token or not stored_hash:
        return False
    return hmac.compare_digest(hash_token(token), stored_hash)


class DeviceTokenValid(BasePermission):
    """With ``DEVICE_TOKEN_REQUIRED``: the request's ``X-Device-Token`` is the one issued to
    the device it claims to be. Refusals are 403 with a code saying which check failed."""

    def has_permission(self, request, view) -> bool:
        if not settings.DEVICE_TOKEN_REQUIRED:
            return True
        from .models import Device
        from .selectors import canonical_id

        token = request.headers.get(TOKEN_HEADER, "")
        if not token:
            raise PermissionDenied(
                f"The {TOKEN_HEADER} header is missing.", code="device_token_missing"
            )
        named = {canonical_id(raw) for raw in claimed_device_ids(request, view) if raw.strip()}
        if not named:
            raise PermissionDenied("The request names no device.", code="device_token_invalid")
        if len(named) > 1:
            # The token is checked against one id and the view acts on another (a confirm
            # whose body names a different machine): one token must not open every device.
            raise PermissionDenied(
                f"The request names more than one device ({', '.join(sorted(named))}).",
                code="device_token_invalid",
            )
        (claimed,) = named
        stored = (
            Device.objects.filter(device_id=canonical_id(claimed))
            .values_list("token_hash", flat=True)
            .first()
        )
        if not token_matches(token, stored or ""):
            raise PermissionDenied(
                f"The {TOKEN_HEADER} is not the one issued to this device.",
                code="device_token_invalid",
            )
        return True
