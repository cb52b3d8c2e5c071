"""Which webhook URLs the server may call: the guard against server-side request forgery.

A webhook URL is typed by whoever holds ``vending_site.add_endpoint``; without a guard it
could point the notifier at the metadata service of a cloud host, the database's port or a
router's admin page on the LAN. So a webhook must be ``http(s)``, and every address its host
resolves to must be a public one, unless it lies in ``WEBHOOK_ALLOWED_NETWORKS`` (CIDRs, empty
by default; a one-box install or a test sets ``127.0.0.0/8``).

The rule is checked twice: when the endpoint is saved (a clear 400 for its author) and when
each delivery is sent, against the very address the notifier then connects to
(:func:`resolve_checked` hands back the checked addresses; ``sending`` connects to one of
them itself), so a name that resolves elsewhere later (DNS rebinding, a changed allow-list)
cannot slip through.
"""

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Link-local and private anyway, named so the refusal says what they are.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
}


class UnsafeURL(ValueError):
    """A webhook URL the server will not call; the message says why."""


def allowed_networks() -> list[Network]:
    return [ipaddress.ip_network(net, strict=False) for net in settings.WEBHOOK_ALLOWED_NETWORKS]


def why_refused(address: Address) -> str | None:
    """What kind of address ``address`` is when it is not a public one, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour:
        # 6to4 (2002::/16) is routed to the IPv4 address inside it: judge that one too.
        inside = why_refused(address.sixtofour)
        if inside is not None:
            return f"a 6to4 address ({address}) of {inside}"
    if address in METADATA_ADDRESSES:
        kind = "a cloud metadata address"
    elif address.is_unspecified:
        kind = "an unspecified address"
    elif address.is_loopback:
        kind = "a loopback address"
    elif address.is_link_local:
        kind = "a link-local address"
    elif address.is_multicast:
        kind = "a multicast address"
    elif address.is_private:
        kind = "a private address"
    elif address.is_reserved or not address.is_global:
        kind = "a reserved address"
    else:
        return None
    if any(address in network for network in allowed_networks()):
        return None
    return f"{kind} ({address}) outside WEBHOOK_ALLOWED_NETWORKS"


def parse(url: str) -> SplitResult:
    """The parts of an ``http(s)`` URL with a host; :class:`UnsafeURL` otherwise."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise UnsafeURL("The URL must be an http:// or https:// URL of at most 2000 characters.")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        raise UnsafeURL("The URL must not contain spaces or control characters.")
    if not url.isascii():  # the request line and Host header go out in ASCII
        raise UnsafeURL(
            "The URL must be ASCII: percent-encode the path, write a host name in punycode "
            "(xn--...)."
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        raise UnsafeURL(f"The URL is malformed: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"Only http:// and https:// URLs are allowed, not {parts.scheme!r}.")
    if not parts.hostname:
        raise UnsafeURL("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("The URL must not carry a user name or password.")
    return parts


def port_of(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def resolve_checked(host: str, port: int) -> list[tuple[int, Address]]:
    """Every address ``host`` resolves to, each checked: (family, address) pairs to connect
    to. :class:`UnsafeURL` when the name does not resolve or any address is refused (one
    bad address among good ones is refused too: which one a client picks is not ours)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"The host {host!r} does not resolve ({exc}).") from None
    found: list[tuple[int, Address]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        reason = why_refused(address)
        if reason is not None:
            raise UnsafeURL(f"The host {host!r} resolves to {reason}.")
        if (family, address) not in found:
            found.append((family, address))
    if not found:
        raise UnsafeURL(f"The host {host!r} does not resolve.")
    return found


def check_url(url: str) -> None:
    """Refuse (:class:`UnsafeURL`) a webhook URL the notifier would not call now."""
    parts = parse(url)
    resolve_checked(parts.hostname, port_of(parts))
