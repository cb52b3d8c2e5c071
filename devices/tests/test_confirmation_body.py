"""The confirmation body: plain ones read directly, the same as the serializer's fields read
them; anything else left to the fields."""

from contextlib import nullcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from devices.api.serializers import VendConfirmationSerializer

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=70),
    st.sampled_from(
        ["ESP32_C0FFEE000001", " ESP32_1", "ESP32_1\\t", "", " ", "a\\x00b", "7", "true", "0"]
    ),
    st.text(min_size=990, max_size=1010),
)
BODIES = st.dictionaries(
    st.sampled_from(["device_id", "slot", "success", "message", "timestamp", "extra"]),
    VALUES,
    max_size=6,
)


@given(BODIES)
def test_a_plain_body_is_read_as_the_fields_read_it(body):
    plain = VendConfirmationSerializer.plain(body)
    if plain is None:
        return  # left to the fields
    serializer = VendConfirmationSerializer(data=body)
    assert serializer.is_valid(), serializer.errors
    assert plain == dict(serializer.validated_data)


@pytest.mark.parametrize(
    "body",
    [
        {"device_id": "ESP32_C0FFEE000001", "slot": 1},
        {"device_id": "ESP32_C0FFEE000001", "slot": 3, "success": False, "message": "jam"},
        {
            "device_id": "ESP32_C0FFEE000001",
            "slot": 1,
            "success": True,
            "message": "Item dispensed successfully",
            "timestamp": 81234,
        },
    ],
)
def test_what_the_firmware_sends_is_read_without_a_serializer(body):
    assert VendConfirmationSerializer.plain(body) == {"success": True, **body}


@pytest.mark.parametrize(
    "body",
    [
        {"device_id": "ESP32_C0FFEE000001", "slot": "1"},  # converted by the field
        {"device_id": "ESP32_C0FFEE000001", "slot": 1, "success": "true"},
        {"device_id": " ESP32_C0FFEE000001", "slot": 1},  # trimmed by the field
        {"device_id": "ESP32_C0FFEE000001", "slot": 1, "firmware": "2.1"},  # logged as unknown
        {"device_id": "ESP32_C0FFEE000001"},  # refused by the field
    ],
)
def test_anything_else_is_left_to_the_fields(body):
    assert VendConfirmationSerializer.plain(body) is None
    refused = pytest.raises(ValidationError) if "slot" not in body else nullcontext()
    with refused:
        VendConfirmationSerializer(data=body).is_valid(raise_exception=True)
