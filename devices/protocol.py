"""Pure functions for the ESP32 wire protocol (no Django imports).

The firmware names one device two ways: ``ESP32_6CC8404FE03C`` when it registers and polls,
``6C:C8:40:4F:E0:3C`` when it confirms. Everything here maps both, in any case, to one
canonical id so that the rest of the server deals with a single key.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

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


# --- USB serial ---------------------------------------------------------------------------

SERIAL_BAUD = 115200
MAX_SERIAL_COMMAND = 50  # the firmware throws longer lines away


class SerialLine(StrEnum):
    """What a line from the serial firmware means."""

    VEND_SUCCESS = "vend_success"
    VEND_FAILED = "vend_failed"
    SLOT_EMPTY = "slot_empty"
    INVALID_SLOT = "invalid_slot"
    DEVICE_ID = "device_id"  # boot banner or IDENTIFY answer
    DEVICE_RESPONSE = "device_response"  # first line of the IDENTIFY answer
    BANNER_FIELD = "banner_field"  # DEVICE_TYPE:, FIRMWARE_VERSION:, SLOTS_AVAILABLE: ...
    STATUS = "status"  # STATUS:ONLINE, STATUS_OK:READY:5_SLOTS, STATUS:READY
    ERROR = "error"
    RECEIVED = "received"  # the firmware echoing a command
    IDLE = "idle"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ParsedLine:
    kind: SerialLine
    text: str
    slot: int | None = None
    value: str = ""
    field: str = ""
    # A numeric banner field's value (SLOTS_AVAILABLE, SLOTS, UPTIME) when it is a number
    # this module accepts (see ascii_int); None when the board sent anything else.
    number: int | None = None


def ascii_int(text: str, max_digits: int) -> int | None:
    """The value of ``text`` if it is 1 to ``max_digits`` ASCII digits, else ``None``.

    Text from a device is never given to ``int()`` unchecked: ``str.isdigit()`` is true for
    ``"²"`` (which ``int()`` refuses) and for other scripts' digits, ``int()`` itself accepts
    signs, spaces and underscores, and a run of more than 4300 digits makes it raise. This
    never raises.
    """
    if not isinstance(text, str) or not 0 < len(text) <= max_digits:
        return None
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)


SLOT_DIGITS = 6  # a vend result's slot number: "VEND_SUCCESS:3"
SLOT_COUNT_DIGITS = 3  # a banner's slot count: "SLOTS_AVAILABLE:5" (the server keeps <= 64)
UPTIME_DIGITS = 10  # seconds since boot
_NUMERIC_FIELDS = {
    "SLOTS_AVAILABLE": SLOT_COUNT_DIGITS,
    "SLOTS": SLOT_COUNT_DIGITS,
    "UPTIME": UPTIME_DIGITS,
}

# A slot number: ASCII digits, at most six. A longer run is not a slot (and more than 4300
# digits would make int() raise), so such a line is not a vend result.
_SLOT = rf"([0-9]{{1,{SLOT_DIGITS}}})(?![0-9])"

_TOKENS: list[tuple[re.Pattern, SerialLine]] = [
    (re.compile(rf"VEND_SUCCESS:{_SLOT}"), SerialLine.VEND_SUCCESS),
    (re.compile(rf"VEND_FAILED:{_SLOT}"), SerialLine.VEND_FAILED),
    (re.compile(rf"ERROR:SLOT_EMPTY(?::{_SLOT})?"), SerialLine.SLOT_EMPTY),
    (re.compile(r"Invalid slot", re.IGNORECASE), SerialLine.INVALID_SLOT),
    (re.compile(r"DEVICE_RESPONSE:(\S+)"), SerialLine.DEVICE_RESPONSE),
    (re.compile(r"DEVICE_ID:(\S+)"), SerialLine.DEVICE_ID),
    (re.compile(r"STATUS(?:_OK)?:(\S+)"), SerialLine.STATUS),
    (
        re.compile(
            r"(DEVICE_TYPE|COMM_METHOD|FIRMWARE_VERSION|SLOTS_AVAILABLE|SLOTS|READY|UPTIME):"
            r"\s*(\S+)"
        ),
        SerialLine.BANNER_FIELD,
    ),
    (re.compile(r"Received command:\s*(\S+)", re.IGNORECASE), SerialLine.RECEIVED),
    (re.compile(r"\b(?:ERROR|Error)\b:?\s*(.*)"), SerialLine.ERROR),
    (re.compile(r"idle", re.IGNORECASE), SerialLine.IDLE),
]


def decode_serial_line(raw: bytes) -> str:
    """Text of one line as received; bytes that are not UTF-8 become U+FFFD, never an error."""
    return raw.decode("utf-8", errors="replace").strip("\r\n\x00 ")


def parse_serial_line(text: str) -> ParsedLine:
    """Find the protocol token anywhere in a (possibly emoji-decorated) line."""
    for pattern, kind in _TOKENS:
        match = pattern.search(text)
        if match is None:
            continue
        if kind in (SerialLine.VEND_SUCCESS, SerialLine.VEND_FAILED):
            return ParsedLine(kind, text, slot=ascii_int(match.group(1), SLOT_DIGITS))
        if kind is SerialLine.SLOT_EMPTY:
            slot = ascii_int(match.group(1) or "", SLOT_DIGITS)
            return ParsedLine(kind, text, slot=slot)
        if kind is SerialLine.BANNER_FIELD:
            field, value = match.group(1), match.group(2)
            digits = _NUMERIC_FIELDS.get(field)
            number = ascii_int(value, digits) if digits else None
            return ParsedLine(kind, text, field=field, value=value, number=number)
        if kind in (
            SerialLine.DEVICE_ID,
            SerialLine.DEVICE_RESPONSE,
            SerialLine.STATUS,
            SerialLine.RECEIVED,
            SerialLine.ERROR,
        ):
            return ParsedLine(kind, text, value=match.group(1).strip())
        return ParsedLine(kind, text)
    return ParsedLine(SerialLine.UNKNOWN, text)


def serial_command(kind: str, slot: int | None = None) -> bytes:
    """One command line for the serial firmware, e.g. ``b"VEND:3\\n"``."""
    text = f"{kind}:{slot}" if slot is not None else kind
    if len(text) > MAX_SERIAL_COMMAND or "\n" in text:
        raise ValueError(f"not a serial command: {text!r}")
    return (text + "\n").encode("ascii")


# USB-UART bridges found on ESP32 boards, as (VID, PID).
ESP32_USB_IDS: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, 0x1001): "Espressif native USB",
}


def likely_esp32(vid: int | None, pid: int | None) -> bool:
    return (vid, pid) in ESP32_USB_IDS
