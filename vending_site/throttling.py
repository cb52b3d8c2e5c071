"""Rate limits (DRF throttles): per user or API key on the REST API, per device on the
device endpoints.

Rates are read from settings on every request (``API_THROTTLE_*``, ``DEVICE_THROTTLE``), so
they follow the environment and ``override_settings``. Counts live in the default cache
(Redis when ``REDIS_URL`` is set, so all workers share them; process memory otherwise).

DRF throttles read, then write, the count without a lock: two workers can both let the
last request through. They protect the server from a runaway client; they guard nothing
that matters. Stock and money are guarded by the database (row locks, constraints).

A refused request gets 429, ``{"detail", "code": "throttled"}`` and ``Retry-After``.
"""

import re

from django.conf import settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

from .network import client_ip

_NOT_ID = re.compile(r"[^A-Z0-9_]")


class _RateFromSettings:
    rate_setting: str = ""

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting) or None

    def get_ident(self, request) -> str:
        return client_ip(request) or "unknown"


class AnonThrottle(_RateFromSettings, AnonRateThrottle):
    """Unauthenticated callers (the token endpoints, ``/status``, ``/health``), by address."""

    rate_setting = "API_THROTTLE_ANON"


class UserThrottle(_RateFromSettings, UserRateThrottle):
    """Reads, per user (each API key is its own user)."""

    rate_setting = "API_THROTTLE_USER"


class VendThrottle(_RateFromSettings, UserRateThrottle):
    """Vend requests, per user or key: stricter than reads."""

    scope = "vend"
    rate_setting = "API_THROTTLE_VEND"


class DeviceThrottle(_RateFromSettings, SimpleRateThrottle):
    """Device endpoints, per claimed device id (else per address).

    The firmware polls every 2 s and sends a register and a confirm now and then, so the
    default leaves it a wide margin; only a runaway or hostile sender meets the limit. The
    firmware treats anything but 200 as "no answer" and retries on its own schedule, so a
    throttled poll only delays a command, but a throttled confirm would leave a vend
    ``unconfirmed``: keep this generous.
    """

    scope = "device"
    rate_setting = "DEVICE_THROTTLE"

    def get_cache_key(self, request, view) -> str:
        from devices.access import claimed_device_id  # DRF imports this module early

        claimed = claimed_device_id(request, view)
        # Only id characters in the key (a hostile id must not shape the cache key).
        ident = _NOT_ID.sub("", claimed.upper())[:64] or self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class DeviceAddressThrottle(_RateFromSettings, SimpleRateThrottle):
    """Device endpoints, per client address, looser than :class:`DeviceThrottle`.

    The per-device limit keys on the id a request claims, and a poll with an unseen id
    registers a new device; so a sender inventing a new id per request would never meet it.
    This limit counts every device request from one address, whatever id it claims. One
    machine is one address on the LAN, so the default is ten machines' worth of margin.
    """

    scope = "device-address"
    rate_setting = "DEVICE_ADDRESS_THROTTLE"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
