"""What the deployed firmware sends, byte for byte (see PROTOCOL.md), for the API tests."""

import json
from typing import Any

from django.db.models import Sum
from django.http import HttpResponse
from rest_framework.test import APIClient

from inventory.models import Slot, StockMovement

# The v2.1 firmware registers and polls with the first spelling and confirms with the second.
DEVICE_ID = "ESP32_6CC8404FE03C"
MAC = "6C:C8:40:4F:E0:3C"


def register_body(**overrides: Any) -> dict:
    """The v2.1 registration, exactly as the firmware sends it."""
    body = {
        "device_id": DEVICE_ID,
        "ip_address": "192.168.1.105",
        "status": "online",
        "slots_available": 5,
    }
    return {**body, **overrides}


def documented_register_body(**overrides: Any) -> dict:
    """The registration of the documented variant (``/esp32/wifi/register``)."""
    body = {
        "device_id": MAC,
        "device_type": "wifi",
        "ip_address": "192.168.1.106",
        "firmware_version": "1.0.0",
        "slots_available": 5,
        "status": "online",
    }
    return {**body, **overrides}


def confirm_body(**overrides: Any) -> dict:
    """The v2.1 confirmation: MAC with colons, device clock in ms, no command id."""
    body = {
        "device_id": MAC,
        "slot": 3,
        "success": True,
        "message": "Item dispensed successfully",
        "timestamp": 81234,
    }
    return {**body, **overrides}


def post_json(client: APIClient, path: str, body: Any, **extra: Any) -> HttpResponse:
    return post_raw(client, path, json.dumps(body), **extra)


def post_raw(client: APIClient, path: str, raw: str | bytes, **extra: Any) -> HttpResponse:
    return client.generic("POST", path, raw, content_type="application/json", **extra)


def poll(client: APIClient, device_id: str = DEVICE_ID, **extra: Any) -> HttpResponse:
    """One v2.1 poll: ``GET /esp32/commands/<device_id>``."""
    return client.get(f"/esp32/commands/{device_id}", **extra)


def poll_documented(client: APIClient, device_id: str = MAC) -> HttpResponse:
    """One poll of the documented variant: ``GET /esp32/wifi/command`` with ``Device-ID``."""
    return client.get("/esp32/wifi/command", HTTP_DEVICE_ID=device_id)


def confirm(client: APIClient, path: str = "/esp32/confirm", **overrides: Any) -> HttpResponse:
    return post_json(client, path, confirm_body(**overrides))


def ledger_total(slot: Slot) -> int:
    """The sum of the slot's ledger deltas."""
    return StockMovement.objects.filter(slot=slot).aggregate(total=Sum("delta"))["total"] or 0


def ledger_rows(slot: Slot) -> list[tuple[str, int]]:
    """``(reason, delta)`` of the slot's ledger, oldest first."""
    return list(
        StockMovement.objects.filter(slot=slot).order_by("id").values_list("reason", "delta")
    )


def writes(captured_queries: list[dict]) -> list[str]:
    """The statements among captured queries that change the database."""
    return [
        query["sql"]
        for query in captured_queries
        if query["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
