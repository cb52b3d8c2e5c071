"""Who is on the other end of a request: the client address, behind trusted proxies.

``REMOTE_ADDR`` is the peer of the TCP connection. Behind nginx that is the proxy, and the
client is in ``X-Forwarded-For``; but anyone can send that header, so it is believed only
when the peer is one of ``TRUSTED_PROXIES`` (default: loopback, where our nginx runs). The
header is read from the right, skipping trusted proxies, so a client cannot push a forged
address in front of the one our proxy appended.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; raises ``ValueError`` on a bad one."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr)


def in_networks(address: str, cidrs) -> bool:
    """Whether ``address`` is inside one of ``cidrs``; an unparseable address is not."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in parse_networks(tuple(cidrs)))


def client_ip(request) -> str:
    """The client's address: ``REMOTE_ADDR``, or the nearest untrusted hop of
    ``X-Forwarded-For`` when the request came through a trusted proxy."""
    return client_ip_of(getattr(request, "META", {}))


def client_ip_of(meta) -> str:
    """:func:`client_ip` of the request whose ``META`` (or WSGI environ) is ``meta``."""
    peer = meta.get("REMOTE_ADDR", "") or ""
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    trusted = tuple(settings.TRUSTED_PROXIES)
    if len(forwarded) > MAX_REMEMBERED_HEADER:  # the sender writes it: keep the cache small
        return _find_client_ip(peer, forwarded, trusted)
    return _client_ip(peer, forwarded, trusted)


MAX_REMEMBERED_HEADER = 256  # characters of X-Forwarded-For that a cached answer may key on


def _find_client_ip(peer: str, forwarded: str, trusted: tuple[str, ...]) -> str:
    if not forwarded or not in_networks(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            # "unknown", "host:port", garbage: a chain we cannot read proves nothing, so
            # only the connection's own address is believed.
            return peer
        if not in_networks(hop, trusted):
            return hop
    return hops[0] if hops else peer


# A request asks this more than once (the throttles, the view, the network check), and every
# machine sends the same pair on every poll: parsing addresses was ~3 % of a worker's CPU.
_client_ip = lru_cache(maxsize=4096)(_find_client_ip)
