"""Which pages may open the dashboard's WebSocket: the site's own, never any page on the web.

A browser sends its cookies with a WebSocket handshake to any site, whatever page opens it,
and the same-origin policy does not apply to sockets: the server must read ``Origin`` itself.
Channels' ``AllowedHostsOriginValidator`` takes ``ALLOWED_HOSTS`` as the list of good
origins, so ``ALLOWED_HOSTS=*`` (the default, for firmware that reaches the server by
whatever LAN address it found) let a page on any site read a staff member's live feed.

:class:`SiteOriginValidator` accepts a handshake whose ``Origin`` is

- the request's own host: the origin's host and port equal the ``Host`` header (a valid
  host under ``ALLOWED_HOSTS``); a ``Host`` without a port matches the origin scheme's
  default port;
- listed in ``CSRF_TRUSTED_ORIGINS`` (Django's format, ``https://*.example.com`` included);
- or, when ``ALLOWED_HOSTS`` lists names (no ``*``), an origin whose host is one of them, as
  Channels accepts.

``*`` in ``ALLOWED_HOSTS`` never admits an origin by itself. A handshake without ``Origin``
comes from no browser (browsers always send it), so no page can forge it; it is accepted
only where Channels accepted it, with ``*`` in ``ALLOWED_HOSTS``. Settings are read on each
handshake, so they follow ``override_settings``.
"""

from urllib.parse import urlsplit

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def _scheme_host_port(url: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an origin, the port defaulted by the scheme; None if
    it is not one (``null``, garbage, an unparsable port)."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme)


def is_same_site(origin: str, host_header: str | None) -> bool:
    """Whether ``origin`` names the host the handshake was sent to (``Host``)."""
    parsed = _scheme_host_port(origin)
    if parsed is None or not host_header:
        return False
    scheme, host, port = parsed
    domain, host_port = split_domain_port(host_header.lower())
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    try:
        expected_port = int(host_port) if host_port else _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return False
    # split_domain_port drops an IPv6 literal's brackets; urlsplit's hostname has none.
    return domain.strip("[]") == host and expected_port == port


def is_trusted(origin: str) -> bool:
    """Whether ``origin`` is one of ``CSRF_TRUSTED_ORIGINS`` (a ``*.`` host matches its
    subdomains, as Django's CSRF check does)."""
    parsed = _scheme_host_port(origin)
    if parsed is None:
        return False
    scheme, host, port = parsed
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in trusted
        expected = _scheme_host_port(trusted.replace("://*.", "://", 1))
        if expected is None:
            continue
        t_scheme, t_host, t_port = expected
        if (t_scheme, t_port) != (scheme, port):
            continue
        if host == t_host or (wildcard and host.endswith("." + t_host)):
            return True
    return False


class SiteOriginValidator(OriginValidator):
    """Refuses (HTTP 403 at the handshake) a WebSocket opened by a page of another site."""

    def __init__(self, application):
        super().__init__(application, allowed_origins=[])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator guards WebSocket connections only")
        if self.allows(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    def allows(self, scope) -> bool:
        origin = _header(scope, b"origin")
        named_hosts = [host for host in settings.ALLOWED_HOSTS if host != "*"]
        if origin is None:
            return "*" in settings.ALLOWED_HOSTS
        if is_same_site(origin, _header(scope, b"host")) or is_trusted(origin):
            return True
        if "*" in settings.ALLOWED_HOSTS:
            return False
        # Channels' own rule for a list of names (ALLOWED_HOSTS-style patterns).
        parsed = urlsplit(origin.strip().lower())
        try:
            return any(self.match_allowed_origin(parsed, host) for host in named_hosts)
        except ValueError:  # an unparsable port
            return False
