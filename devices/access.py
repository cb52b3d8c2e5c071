"""Who may talk to the device endpoints, and which devices may receive commands.

The deployed firmware sends no credentials, so whoever reaches port 5000 can send what a
machine sends. What stands between such a sender and the money (docs/security.md):

- **Admission** (``DEVICE_APPROVAL_REQUIRED``, on by default): a WiFi machine that
  registers or first polls is *pending*: listed, its ``last_seen`` moves, but it has no
  slots and no command can be queued for it until staff approve it (a vend for it is 409
  ``device_not_approved``). At most ``DEVICE_PENDING_LIMIT`` wait at once; beyond that a new
  id is refused without a write. Never-approved machines are pruned. A machine on a USB
  serial link needs no approval: someone plugged its cable into this server.
- **Binding** (``DEVICE_ADDRESS_BINDING``, on by default): an approved WiFi machine is bound
  to the address it was approved from (or, approved with none known, to the address of its
  next request). A request for it from any other address is refused (403) and changes
  nothing; the machine is marked *moved* for staff, who accept the move or not.
- **Sticky transport**: nothing arriving over HTTP acts for a machine linked by USB serial.
- **No browser drive-by**: a request carrying what only browsers send (``Origin``, a
  cross-site ``Sec-Fetch-Site``, cookies) or a form-encoded body is refused before it is
  parsed: a web page open on the LAN cannot make a visitor's browser play a machine.
- ``DEVICE_ALLOWED_NETWORKS``: device HTTP endpoints and UDP discovery answer only senders
  inside these networks (403 over HTTP before anything is parsed, silence over UDP).
- ``DEVICE_TOKEN_REQUIRED``: every device request carries ``X-Device-Token``, the token
  issued for that device. Only its SHA-256 is stored. For future firmware: today's sends no
  header, so it is off by default.

The address is the client's, through ``TRUSTED_PROXIES`` (``vending_site.http.network``). The
firmware treats any status but 200 as "no answer" and retries on its schedule, so a refused
sender simply never gets work; nothing on a real machine breaks.
"""

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache

from django.conf import settings
from django.http import JsonResponse
from django.utils import timezone
from django.utils.deprecation import MiddlewareMixin
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from vending_site.http.errors import DomainError
from vending_site.http.network import client_ip, in_networks

TOKEN_HEADER = "X-Device-Token"


class DeviceNotApproved(DomainError):
    code = "device_not_approved"


class DeviceBoundElsewhere(DomainError):
    status_code = 403
    code = "device_bound_elsewhere"


class LinkedBySerial(DomainError):
    status_code = 403
    code = "device_linked_by_serial"


class TooManyPending(DomainError):
    status_code = 403
    code = "too_many_pending"


class BrowserRequestRefused(DomainError):
    status_code = 403
    code = "browser_request_refused"


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
        # Marked by devices.api.device_views.DeviceEndpoint (the firmware's endpoints).
        if not getattr(getattr(view_func, "view_class", None), "serves_firmware", False):
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


def pending_devices():
    """WiFi machines never approved (the ones ``DEVICE_PENDING_LIMIT`` counts)."""
    from .choices import Transport
    from .models import Device

    # A revoked machine (approved once) is history staff chose to keep, not a newcomer.
    return Device.objects.filter(approved=False, approved_at__isnull=True).exclude(
        transport=Transport.SERIAL
    )


def check_room_for_pending(device_id: str) -> None:
    """Refuse a new WiFi machine when ``DEVICE_PENDING_LIMIT`` machines already wait.

    Called before the row is written, so a flood of invented ids writes nothing once the
    limit is reached. Registrations racing at the limit may all pass: the cap can be
    exceeded by as many as the server handles at once."""
    if not settings.DEVICE_APPROVAL_REQUIRED:
        return
    limit = settings.DEVICE_PENDING_LIMIT
    if pending_devices().count() >= limit:
        raise TooManyPending(
            f"{device_id} is not admitted: {limit} machines already await staff approval "
            "(DEVICE_PENDING_LIMIT). Approve or delete some in the admin.",
            device_id=device_id,
        )


# --- Binding -------------------------------------------------------------------------------


@lru_cache(maxsize=4096)  # every poll compares its address: parse each one once
def canonical_ip(address: str | None) -> str | None:
    """``address`` as the database stores an IP (an IPv4-mapped IPv6 address as the IPv4
    one), or None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


# The address that asks to act as a machine staff have not bound to it (a pending machine's,
# or a bound machine's new one) is kept while its sender keeps asking: another address
# replaces it only after this long without a word from it, so the address staff approve is
# the one they were shown, not whichever request came last. Its time is refreshed at most
# every CANDIDATE_REFRESH, so a machine that keeps polling writes twice a minute at most.
CANDIDATE_KEPT_FOR = timedelta(seconds=60)
CANDIDATE_REFRESH = timedelta(seconds=30)


def _note_candidate(device, here: str | None) -> None:
    from .models import Device

    if not here:
        return
    now = timezone.now()
    same = canonical_ip(device.moved_to) == here
    age = now - device.moved_at if device.moved_at else None
    if same and age is not None and age < CANDIDATE_REFRESH:
        return
    if not same and device.moved_to and age is not None and age < CANDIDATE_KEPT_FOR:
        return  # another address still asks: it keeps its place in front of staff
    Device.objects.filter(pk=device.pk).update(moved_to=here, moved_at=now)
    device.moved_to, device.moved_at = here, now


def admit_wifi_request(device, *, device_id: str, address: str) -> None:
    """A register or a poll over HTTP names ``device_id`` (``device``: its row, or None when
    it is new): refuse what may not act for a known machine, and a new one when
    ``DEVICE_PENDING_LIMIT`` machines already wait. Raises before anything is written."""
    if device is None:
        check_room_for_pending(device_id)
    else:
        check_wifi_request(device, address=address)


def wifi_request_allowed(device, *, address: str) -> bool:
    """Whether an HTTP request from ``address`` may act for ``device`` as it stands, with
    nothing to note: a WiFi machine, from its bound address (or any, with binding off)."""
    from .choices import Transport

    if device.transport == Transport.SERIAL:
        return False
    if not settings.DEVICE_ADDRESS_BINDING:
        return True
    here = canonical_ip(address)
    return bool(here and device.bound_address and here == canonical_ip(device.bound_address))


def check_wifi_request(device, *, address: str) -> None:
    """May an HTTP request from ``address`` act for ``device``? Raise if not.

    - A machine linked by USB serial: never over HTTP.
    - A bound machine: only from its bound address (also while revoked: nobody else may
      settle a vend it still had in hand).
    - A pending machine (never approved): from any address, so it can announce itself;
      it gets no commands. The address it asks from is noted for staff.
    - An approved machine with no address bound (made by staff, or approved before binding
      existed and left unbound by the migration): refused like a moved machine until staff
      accept the address it asks from; nobody binds it by speaking first.

    Refusals and acceptances write only the candidate address, at most twice a minute per
    machine, so an idle fleet's polls stay reads."""
    from .choices import Transport

    if wifi_request_allowed(device, address=address):
        return
    if device.transport == Transport.SERIAL:
        raise LinkedBySerial(
            f"{device.device_id} is linked by USB serial; requests over HTTP cannot act for it.",
            device_id=device.device_id,
        )
    here = canonical_ip(address)
    if device.bound_address:
        _note_candidate(device, here)
        raise DeviceBoundElsewhere(
            f"{device.device_id} is bound to another address; requests for it from "
            f"{address or 'an unknown address'} are refused until staff accept the move.",
            device_id=device.device_id,
        )
    _note_candidate(device, here)
    if device.awaiting_approval:
        return
    raise DeviceBoundElsewhere(
        f"{device.device_id} has no address bound yet; requests for it from "
        f"{address or 'an unknown address'} are refused until staff accept that address.",
        device_id=device.device_id,
    )


# --- Browsers ------------------------------------------------------------------------------

# Content types an HTML form can send without a script: the firmware posts JSON.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
BROWSER_FETCH_SITES = ("cross-site", "same-site", "same-origin")


def browser_request_reason(request) -> str | None:
    """Why ``request`` looks like a browser's (the firmware sends none of this), or None."""
    return browser_headers_reason(request.headers.get)


# Where a WSGI environ holds the headers browser_headers_reason() reads.
ENVIRON_HEADERS = {
    "Origin": "HTTP_ORIGIN",
    "Sec-Fetch-Site": "HTTP_SEC_FETCH_SITE",
    "Cookie": "HTTP_COOKIE",
    "User-Agent": "HTTP_USER_AGENT",
    "Content-Type": "CONTENT_TYPE",
}


def browser_headers_reason(header: Callable[[str], str | None]) -> str | None:
    """:func:`browser_request_reason` of the request whose header ``name`` is ``header(name)``
    (None when absent)."""
    if header("Origin") is not None:
        return "it carries an Origin header"
    if (header("Sec-Fetch-Site") or "").lower() in BROWSER_FETCH_SITES:
        return "it was sent by a browser from a web page (Sec-Fetch-Site)"
    if (header("Cookie") or "").strip():
        return "it carries cookies"
    # Every browser names itself "Mozilla/5.0 ..." and a page cannot change it; browsers
    # send Fetch Metadata and Origin only to trustworthy origins (loopback, HTTPS), not to a
    # machine port on a LAN address over plain HTTP, so this is what catches an <img> there.
    if (header("User-Agent") or "").startswith("Mozilla/"):
        return "it was sent by a web browser (User-Agent)"
    content_type = (header("Content-Type") or "").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        return f"its body is {content_type}, not the firmware's JSON"
    return None


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
