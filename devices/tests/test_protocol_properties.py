"""Properties of the wire protocol's pure functions (hypothesis): the serial line parser, the
serial command formatter and device-id normalisation. Whatever bytes a device or a network
sends, these return an answer or raise their one documented error, never anything else."""

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from devices.protocol import (
    MAX_DEVICE_ID_LENGTH,
    MAX_SERIAL_COMMAND,
    SLOT_COUNT_DIGITS,
    InvalidDeviceId,
    ParsedLine,
    SerialLine,
    ascii_int,
    decode_serial_line,
    mac_from_device_id,
    normalize_device_id,
    parse_serial_line,
    serial_command,
)

# --- The serial line parser ---------------------------------------------------------------

TOKENS = [
    "VEND_SUCCESS:",
    "VEND_FAILED:",
    "ERROR:SLOT_EMPTY:",
    "DEVICE_ID:",
    "DEVICE_RESPONSE:",
    "STATUS:",
    "STATUS_OK:",
    "SLOTS_AVAILABLE:",
    "Received command: ",
    "Error: ",
    "idle",
]
DECORATIONS = ["", "✅ ", "❌ ", "📨 ", "🎯 ", "💤 ", "⚡ ", "  ", "\ufffd"]
# Text around a token: anything, or digits (a slot number, also an absurdly long one).
NOISE = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789", min_size=1, max_size=6000),
)
SLOTS = st.integers(min_value=0, max_value=999_999)


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_text_and_parse_without_error(raw):
    text = decode_serial_line(raw)
    assert isinstance(text, str)
    assert text == text.strip("\r\n\x00 ")
    parsed = parse_serial_line(text)
    assert isinstance(parsed, ParsedLine)
    assert parsed.kind in SerialLine
    assert parsed.text == text


@given(st.sampled_from(DECORATIONS), st.sampled_from(TOKENS), NOISE, NOISE)
@example("✅ ", "VEND_SUCCESS:", "9" * 5000, "")  # more digits than int() converts
@example("", "STATUS:", "", "")
def test_a_token_among_any_text_parses_without_error(decoration, token, before, after):
    line = before + decoration + token + after
    parsed = parse_serial_line(line)
    assert parsed.kind in SerialLine
    assert parsed.text == line
    if parsed.slot is not None:
        assert 0 <= parsed.slot <= 999_999  # a slot, never a 5000-digit number


@given(
    st.sampled_from(DECORATIONS),
    st.sampled_from(["VEND_SUCCESS", "VEND_FAILED"]),
    SLOTS,
    st.sampled_from(["", "\r", "\r\n", "\x00"]),
)
def test_a_vend_result_round_trips_through_the_wire(decoration, kind, slot, ending):
    raw = f"{decoration}{kind}:{slot}{ending}".encode()
    parsed = parse_serial_line(decode_serial_line(raw))
    assert parsed.kind == SerialLine(kind.lower())
    assert parsed.slot == slot


@given(st.sampled_from(DECORATIONS), st.text(alphabet="0123456789", min_size=7, max_size=6000))
def test_a_slot_number_too_long_to_be_a_slot_is_not_a_vend_result(decoration, digits):
    parsed = parse_serial_line(f"{decoration}VEND_SUCCESS:{digits}")
    assert parsed.kind is not SerialLine.VEND_SUCCESS


# Digits of every kind: ASCII, other scripts' (Nd), superscripts and fractions (No).
ANY_DIGITS = st.text(
    alphabet=st.one_of(st.sampled_from("0123456789"), st.characters(categories=["Nd", "No"])),
    min_size=1,
    max_size=6000,
)


@given(
    st.sampled_from(DECORATIONS),
    st.sampled_from(["SLOTS_AVAILABLE", "SLOTS", "UPTIME", "FIRMWARE_VERSION"]),
    st.one_of(ANY_DIGITS, st.text(min_size=1, max_size=60)),
)
@example("", "SLOTS_AVAILABLE", "²")
@example("", "SLOTS_AVAILABLE", "9" * 5000)
def test_a_banner_field_with_any_value_parses_without_error(decoration, name, value):
    line = f"{decoration}{name}:{value}"
    parsed = parse_serial_line(line)  # never raises
    assert parsed.kind in SerialLine
    if parsed.kind is SerialLine.BANNER_FIELD and parsed.number is not None:
        assert re.fullmatch(r"[0-9]{1,10}", parsed.value)
        assert parsed.number == int(parsed.value)
    if name.startswith("SLOTS") and parsed.number is not None:
        assert parsed.number < 10**SLOT_COUNT_DIGITS


@given(st.one_of(ANY_DIGITS, st.text(max_size=40)), st.integers(min_value=0, max_value=30))
@example("²", 3)
@example("9" * 5000, 3)
def test_ascii_int_is_a_number_only_for_a_few_ascii_digits_and_never_raises(text, max_digits):
    plain = max_digits > 0 and re.fullmatch(rf"[0-9]{{1,{max_digits}}}", text)
    assert ascii_int(text, max_digits) == (int(text) if plain else None)


SERVER_COMMANDS = st.one_of(
    st.tuples(st.just("VEND"), st.integers(min_value=1, max_value=10_000)),
    st.tuples(
        st.sampled_from(["STATUS", "PING", "IDENTIFY", "DISCOVER", "RESET", "HELP"]), st.none()
    ),
)


@given(SERVER_COMMANDS)
def test_a_formatted_command_is_one_line_and_the_device_echo_parses_back(command):
    kind, slot = command
    line = serial_command(kind, slot)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= MAX_SERIAL_COMMAND + 1
    text = line.decode("ascii").strip()
    echo = parse_serial_line(decode_serial_line(f"📨 Received command: {text}\r\n".encode()))
    assert (echo.kind, echo.value) == (SerialLine.RECEIVED, text)


@given(st.text(max_size=80), st.one_of(st.none(), st.integers()))
def test_formatting_a_command_raises_only_value_error(kind, slot):
    try:
        line = serial_command(kind, slot)
    except (ValueError, UnicodeEncodeError):  # UnicodeEncodeError is a ValueError
        return
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= MAX_SERIAL_COMMAND + 1


# --- Device-id normalisation --------------------------------------------------------------

MACS = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda octets: "".join(f"{b:02X}" for b in octets)
)


def spellings(hex12: str, separator: str) -> list[str]:
    pairs = [hex12[i : i + 2] for i in range(0, 12, 2)]
    return [
        separator.join(pairs),  # what the v2.1 firmware confirms with
        "ESP32_" + hex12,  # what it registers and polls with
        hex12,
    ]


@given(
    MACS,
    st.sampled_from([":", "-"]),
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.sampled_from(["", " ", "\n", "\t "]),
)
def test_every_spelling_of_a_mac_in_any_case_is_one_device(hex12, separator, lower, padding):
    canonical = "ESP32_" + hex12
    for spelling in spellings(hex12, separator):
        mixed = "".join(c.lower() if low else c for c, low in zip(spelling, lower, strict=False))
        mixed += spelling[len(lower) :]
        assert normalize_device_id(padding + mixed + padding) == canonical
    assert mac_from_device_id(canonical) == ":".join(hex12[i : i + 2] for i in range(0, 12, 2))
    assert normalize_device_id(mac_from_device_id(canonical)) == canonical


@given(st.text(max_size=MAX_DEVICE_ID_LENGTH + 20))
@example("ESP32_6cc8404fe03c")
@example("6C:C8:40:4F:E0:3C")
@example("6C:C8-40:4F:E0:3C")  # mixed separators: not a MAC, kept as an id
def test_normalisation_is_idempotent_or_refuses_with_invalid_device_id(text):
    try:
        canonical = normalize_device_id(text)
    except InvalidDeviceId:
        return
    assert normalize_device_id(canonical) == canonical
    assert canonical == canonical.upper()
    assert re.fullmatch(r"[A-Z0-9_:.\-]+", canonical)
    assert len(canonical) <= MAX_DEVICE_ID_LENGTH
    mac = mac_from_device_id(canonical)
    if mac:
        assert normalize_device_id(mac) == canonical


@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_a_non_string_id_is_refused_with_invalid_device_id(value):
    with pytest.raises(InvalidDeviceId):
        normalize_device_id(value)
