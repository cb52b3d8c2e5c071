"""The vend body: read directly when plain, through the serializer's fields otherwise, with
the same result either way."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from transactions.api.serializers import VendRequestSerializer

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=70),
    st.sampled_from(["ESP32_C0FFEE000001", " ESP32_1", "ESP32_1\\n", "", " ", "a\\x00b", "7"]),
    st.lists(st.integers(), max_size=2),
)
BODIES = st.dictionaries(
    st.sampled_from(["device_id", "wait", "slot", "extra"]), VALUES, max_size=3
)


def through_the_fields(body: dict):
    serializer = VendRequestSerializer(data=body)
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError as exc:
        return ("refused", exc.detail)
    return ("read", dict(serializer.validated_data))


def read(body: dict):
    try:
        return ("read", dict(VendRequestSerializer.read(body)))
    except ValidationError as exc:
        return ("refused", exc.detail)


@given(BODIES)
def test_any_body_is_read_or_refused_as_the_fields_would(body):
    assert read(body) == through_the_fields(body)


@pytest.mark.parametrize(
    "body",
    [{}, {"device_id": "ESP32_C0FFEE000001"}, {"device_id": None, "wait": 5}, {"wait": 2.5}],
)
def test_a_plain_body_is_read_without_a_serializer(body, monkeypatch):
    def no_serializer(*args, **kwargs):
        raise AssertionError("a serializer was made for a plain body")

    monkeypatch.setattr(VendRequestSerializer, "__init__", no_serializer)

    assert read(body) == ("read", {**body, "wait": float(body.get("wait", 0))})
