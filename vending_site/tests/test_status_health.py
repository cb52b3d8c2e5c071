"""``/status`` (the firmware's probe and the fleet summary), ``/health`` and the device list."""

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from tests.factories import DeviceFactory, SlotFactory
from vending_site.http import health

DEVICE_ID = "ESP32_6CC8404FE03C"


@pytest.fixture
def vend_client(db, client_for, staff):
    return client_for(staff)


def test_status_answers_an_anonymous_probe_with_200_naming_the_service(
    online_device, api_client, django_assert_num_queries
):
    with django_assert_num_queries(0):
        response = api_client.get("/status")

    assert response.status_code == 200
    assert b"vending" in response.content
    assert b"status" in response.content
    assert response.json() == {"service": "vending", "status": "ok"}


def test_an_anonymous_status_does_not_grow_with_the_fleet(online_device, api_client):
    """Finding 5 of the device-trust review: with a flood of invented machines the
    anonymous /status grew to 8.2 MB and took 11.9 s, starving the machines' polls."""
    small = api_client.get("/status").content
    for n in range(30):
        device = DeviceFactory(last_seen=timezone.now())
        for number in range(1, 6):
            SlotFactory(device=device, number=number, product__sku=f"SKU-{n}-{number}")

    assert api_client.get("/status").content == small


def test_status_gives_a_vend_client_the_active_device(online_device, vend_client):
    assert vend_client.get("/status").json()["active_device"] == DEVICE_ID


def test_status_lists_each_device_with_its_online_state_and_slot_inventory(
    online_device, vend_client
):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA", last_seen=timezone.now() - timedelta(hours=1))

    body = vend_client.get("/status").json()

    devices = {d["device_id"]: d for d in body["devices"]}
    assert body["devices_online"] == 1
    assert devices[DEVICE_ID]["online"] is True
    assert devices["ESP32_AAAAAAAAAAAA"]["online"] is False
    assert devices["ESP32_AAAAAAAAAAAA"]["inventory"] == []
    inventory = devices[DEVICE_ID]["inventory"]
    assert [slot["slot_id"] for slot in inventory] == [1, 2, 3, 4, 5]
    assert inventory[2]["quantity"] == 5
    assert inventory[2]["capacity"] == 10
    assert inventory[2]["product"]["sku"] == "SKU-3"


def test_status_queries_do_not_grow_with_the_fleet(
    online_device, vend_client, django_assert_max_num_queries
):
    # The user's groups are not read for staff; the devices, their slots with products
    # (a read never sweeps: the sweeper does).
    api_client = vend_client
    with django_assert_max_num_queries(2) as one:
        assert len(api_client.get("/status").json()["devices"]) == 1
    for n in range(5):
        device = DeviceFactory(last_seen=timezone.now())
        for number in range(1, 4):
            SlotFactory(device=device, number=number, product__sku=f"SKU-{n}-{number}")
    with django_assert_max_num_queries(2) as six:
        assert len(api_client.get("/status").json()["devices"]) == 6

    assert len(six.captured_queries) == len(one.captured_queries)


def test_health_reports_every_check_ok(db, api_client):
    response = api_client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "checks": {"database": "ok", "migrations": "ok", "channel_layer": "ok"},
    }


@pytest.mark.parametrize("failing", ["database", "migrations"])
def test_health_answers_503_naming_the_failing_essential_check(
    db, api_client, monkeypatch, failing
):
    def broken() -> str:
        raise OperationalError("connection refused")

    # A stand-in for a broken dependency: the one place a fake is the honest test.
    monkeypatch.setitem(health.CHECKS, failing, broken)

    response = api_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"][failing] == "error: connection refused"
    assert {name: result for name, result in body["checks"].items() if name != failing} == {
        name: "ok" for name in health.CHECKS if name != failing
    }


def test_health_with_redis_unreachable_is_200_degraded_naming_the_channel_layer(
    db, api_client, settings
):
    # A real channel layer at a port where nothing listens: the round trip fails.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }

    response = api_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"].startswith("error: ")


def test_device_list_names_every_device_and_the_active_one(online_device, user, client_for):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA")

    response = client_for(user).get("/esp32/devices/list")  # a vend-client (see permissions)

    assert response.status_code == 200
    body = response.json()
    assert body["active_device"] == DEVICE_ID
    assert [(d["device_id"], d["online"], d["is_active"]) for d in body["devices"]] == [
        ("ESP32_6CC8404FE03C", True, True),
        ("ESP32_AAAAAAAAAAAA", False, False),
    ]
    assert body["devices"][0]["slots"] == 5


def test_device_list_has_no_active_device_when_none_is_selected(db, user, client_for):
    DeviceFactory(device_id="ESP32_AAAAAAAAAAAA")

    body = client_for(user).get("/esp32/devices/list").json()

    assert body["active_device"] is None
    assert len(body["devices"]) == 1
