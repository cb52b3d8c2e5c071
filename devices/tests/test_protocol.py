"""The wire protocol's pure functions: device-id rules and serial lines (no database)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.protocol import (
    InvalidDeviceId,
    SerialLine,
    ascii_int,
    mac_from_device_id,
    normalize_device_id,
    parse_serial_line,
)

MAC_BYTES = st.lists(st.integers(0, 255), min_size=6, max_size=6)


@pytest.mark.parametrize(
    "spelling",
    [
        "ESP32_6CC8404FE03C",
        "esp32_6cc8404fe03c",
        "6C:C8:40:4F:E0:3C",
        "6c:c8:40:4f:e0:3c",
        "6C-C8-40-4F-E0-3C",
        "6CC8404FE03C",
        "  ESP32_6CC8404FE03C\n",
    ],
)
def test_every_spelling_of_one_mac_is_the_same_device(spelling):
    assert normalize_device_id(spelling) == "ESP32_6CC8404FE03C"


def test_ids_that_are_not_macs_are_upper_cased_and_kept():
    assert normalize_device_id("ESP32_USB_VENDING") == "ESP32_USB_VENDING"
    assert normalize_device_id("esp32_demo") == "ESP32_DEMO"


@pytest.mark.parametrize(
    "bad", ["", "   ", "x" * 65, "ESP32 6CC8", "ESP32_\x00", "caf\u00e9", "a/b", "<script>"]
)
def test_malformed_ids_are_refused_with_a_reason(bad):
    with pytest.raises(InvalidDeviceId):
        normalize_device_id(bad)


def test_non_string_is_refused():
    with pytest.raises(InvalidDeviceId):
        normalize_device_id(12345)  # type: ignore[arg-type]


def test_mac_is_derived_from_a_mac_based_id_only():
    assert mac_from_device_id("ESP32_6CC8404FE03C") == "6C:C8:40:4F:E0:3C"
    assert mac_from_device_id("ESP32_USB_VENDING") == ""


@given(MAC_BYTES, st.sampled_from([":", "-"]), st.booleans())
def test_any_mac_round_trips_through_its_canonical_id(octets, separator, lower):
    mac = separator.join(f"{b:02X}" for b in octets)
    spelled = mac.lower() if lower else mac
    canonical = normalize_device_id(spelled)
    assert canonical == "ESP32_" + "".join(f"{b:02X}" for b in octets)
    assert mac_from_device_id(canonical) == mac.replace("-", ":")
    assert normalize_device_id(mac_from_device_id(canonical)) == canonical


@given(st.text(max_size=80))
def test_normalisation_never_fails_other_than_by_invalid_device_id(text):
    try:
        result = normalize_device_id(text)
    except InvalidDeviceId:
        return
    assert result == result.upper()
    assert 1 <= len(result) <= 64
    assert normalize_device_id(result) == result


# --- Serial lines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "slot"),
    [("✅ VEND_SUCCESS:3", 3), ("VEND_FAILED:5\r", 5), ("ERROR:SLOT_EMPTY:2", 2)],
)
def test_a_vend_result_line_names_its_slot(line, slot):
    assert parse_serial_line(line).slot == slot


@pytest.mark.parametrize("token", ["VEND_SUCCESS:", "VEND_FAILED:", "ERROR:SLOT_EMPTY:"])
def test_a_slot_number_longer_than_int_converts_is_not_a_vend_result_and_no_crash(token):
    # Found by hypothesis: int() refuses more than 4300 digits, and the bridge only cuts a
    # line at 4096 bytes when it has no newline.
    parsed = parse_serial_line(f"✅ {token}{'9' * 5000}")
    assert parsed.kind not in (SerialLine.VEND_SUCCESS, SerialLine.VEND_FAILED)
    assert parsed.slot is None
    assert parse_serial_line("VEND_SUCCESS:1234567").kind is SerialLine.UNKNOWN


# --- Numbers a device sends ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("5", 5), ("064", 64), ("999", 999)],
)
def test_ascii_digits_within_the_bound_are_a_number(text, value):
    assert ascii_int(text, 3) == value


@pytest.mark.parametrize(
    "text",
    [
        "²",  # superscript two: str.isdigit() is true, int() raises
        "٣",  # Arabic-Indic three: int() would take it as 3
        "\uff15",  # fullwidth five
        "1000",  # one digit too many
        "9" * 5000,  # more digits than int() converts
        "",
        " 5",
        "+5",
        "-1",
        "1_0",
        "5\n",
    ],
)
def test_anything_but_a_few_ascii_digits_is_no_number_and_no_error(text):
    assert ascii_int(text, 3) is None


@pytest.mark.parametrize(
    "line",
    ["SLOTS_AVAILABLE:²", "SLOTS_AVAILABLE:" + "7" * 5000, "SLOTS_AVAILABLE:1000", "SLOTS:٣"],
)
def test_a_banner_slot_count_that_is_not_one_to_three_ascii_digits_has_no_number(line):
    parsed = parse_serial_line(line)
    assert parsed.kind is SerialLine.BANNER_FIELD
    assert parsed.number is None


def test_a_banner_slot_count_of_ascii_digits_is_its_number():
    parsed = parse_serial_line("SLOTS_AVAILABLE:5")
    assert (parsed.field, parsed.value, parsed.number) == ("SLOTS_AVAILABLE", "5", 5)
    assert parse_serial_line("UPTIME:86400").number == 86400
    assert parse_serial_line("FIRMWARE_VERSION:1.1").number is None  # not a numeric field
