"""Rate limits of the device endpoints (the firmware's register, poll and confirm, and the
staff endpoints under ``/esp32/devices/``). Counting: ``vending_site.http.throttling``."""

import re

from rest_framework.throttling import SimpleRateThrottle

from devices.access import claimed_device_id
from devices.protocol import InvalidDeviceId, normalize_device_id
from vending_site.http.throttling import RateFromSettings, WindowCounting

_NOT_ID = re.compile(r"[^A-Z0-9_]")


class DeviceThrottle(WindowCounting, RateFromSettings, SimpleRateThrottle):
    """Device endpoints, per claimed device id and sending address (else per address).

    Keyed on the address too, so a sender claiming a machine's id spends its own allowance,
    never the machine's: only requests from the machine's own address count against the
    machine (and a bound machine is served from that address alone, devices/access.py).

    The firmware polls every 2 s and sends a register and a confirm now and then, so the
    default leaves it a wide margin; only a runaway or hostile sender meets the limit. The
    firmware treats anything but 200 as "no answer" and retries on its own schedule, so a
    throttled poll only delays a command, but a throttled confirm would leave a vend
    ``unconfirmed``: keep this generous.
    """

    scope = "device"
    rate_setting = "DEVICE_THROTTLE"

    def get_cache_key(self, request, view) -> str:
        claimed = claimed_device_id(request, view)
        try:
            # One machine, one count, however it spells its id (the firmware's dialects send
            # the MAC with or without colons, or the ESP32_ id).
            claimed = normalize_device_id(claimed)
        except InvalidDeviceId:
            pass  # the view refuses it; still counted, under what it claimed
        # Only id characters in the key (a hostile id must not shape the cache key).
        device = _NOT_ID.sub("", claimed.upper())[:64]
        address = _NOT_ID.sub("_", self.get_ident(request).upper())[:64]
        ident = f"{device}_AT_{address}" if device else address
        return self.cache_format % {"scope": self.scope, "ident": ident}


class DeviceAddressThrottle(WindowCounting, RateFromSettings, SimpleRateThrottle):
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
