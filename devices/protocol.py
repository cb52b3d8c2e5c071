"""Pure functions for the ESP32 wire protocol (no Django imports).

The firmware names one device two ways: ``ESP32_6CC8404FE03C`` when it registers and polls,
``6C:C8:40:4F:E0:3C`` when it confirms. Everything here maps both, in any case, to one
canonical id so that the rest of the server deals with a single key.
"""

import re

MAX_DEVICE_ID_LENGTH = 64
DEVICE_ID_PREFIX = "ESP32_"

_MAC_SEPARATED = re.compile(r"^([0-9A-F]{2})([:-])([0-9A-F]{2})(\2[0-9A-F]{2}){4}$")
_HEX12 = re.compile(r"^[0-9A-F]{12}$")
_ALLOWED = re.compile(r"^[A-Z0-9_:.\-]+$")


class InvalidDeviceId(ValueError):
    """The text cannot be a device id."""


def normalize_device_id(raw: str) -> str:
    """The canonical id for any spelling the firmware uses.

    A MAC address (``6C:C8:40:4F:E0:3C``, ``6c-c8-...``, ``6CC8404FE03C``) and an ``ESP32_``
    id built from it become ``ESP32_6CC8404FE03C``; any other id is upper-cased.
    Raises :class:`InvalidDeviceId` for empty, over-long or oddly spelled ids.
    """
    if not isinstance(raw, str):
        raise InvalidDeviceId("device id must be a string")
    text = raw.strip().upper()
    if not text:
        raise InvalidDeviceId("device id is empty")
    if len(text) > MAX_DEVICE_ID_LENGTH:
        raise InvalidDeviceId(f"device id is longer than {MAX_DEVICE_ID_LENGTH} characters")
    if not _ALLOWED.match(text):
        raise InvalidDeviceId(
            "device id may contain only letters, digits and the characters _ : . -"
        )
    if _MAC_SEPARATED.match(text):
        return DEVICE_ID_PREFIX + re.sub(r"[:-]", "", text)
    if _HEX12.match(text):
        return DEVICE_ID_PREFIX + text
    return text


def mac_from_device_id(device_id: str) -> str:
    """``6C:C8:40:4F:E0:3C`` for a canonical MAC-based id, else ``""``."""
    if device_id.startswith(DEVICE_ID_PREFIX):
        tail = device_id[len(DEVICE_ID_PREFIX) :]
        if _HEX12.match(tail):
            return ":".join(tail[i : i + 2] for i in range(0, 12, 2))
    return ""


# --- UDP discovery ------------------------------------------------------------------------

DISCOVERY_REQUESTS: dict[bytes, str] = {
    b"ESP32_DISCOVERY_REQUEST": "FLASK_SERVER:",  # firmware v2.1
    b"DISCOVER_FLASK_SERVER": "FLASK_SERVER_IP:",  # the documented variant
}
MAX_DISCOVERY_DATAGRAM = 64


def discovery_reply(datagram: bytes, server_ip: str) -> bytes | None:
    """The answer to a discovery datagram, or ``None`` for anything that is not one.

    Surrounding whitespace and a trailing NUL (C strings) are tolerated; nothing else is.
    """
    if len(datagram) > MAX_DISCOVERY_DATAGRAM:
        return None
    prefix = DISCOVERY_REQUESTS.get(datagram.strip(b" \t\r\n\x00"))
    if prefix is None:
        return None
    return f"{prefix}{server_ip}".encode("ascii")
