"""The demo machine `make run` loads on first start, so the admin and dashboard are not empty."""

from decimal import Decimal

from django.db import transaction

from devices.choices import Protocol, Transport
from devices.models import Device
from devices.services import activate_if_none_active
from inventory.choices import MovementReason
from inventory.models import Product, Slot
from inventory.services import ensure_slots, set_stock

DEMO_DEVICE_ID = "ESP32_DEMO"
# The demo's WiFi machines are played on this host (simulators, curl), so they are bound here.
DEMO_ADDRESS = "127.0.0.1"
DEMO_PRODUCTS = [
    ("Sparkling water 0.5 l", "WATER-05", "1.20", 8),
    ("Cola 0.33 l", "COLA-033", "1.80", 6),
    ("Chocolate bar", "CHOC-100", "1.50", 10),
    ("Salted peanuts", "NUTS-150", "2.00", 2),
    ("Apple juice 0.25 l", "APPLE-025", "1.60", 0),
]


def demo_data_needed() -> bool:
    return not Device.objects.exists() and not Product.objects.exists()


@transaction.atomic
def load_demo_data() -> Device:
    """One WiFi machine, ``ESP32_DEMO``, with five slots of products (one low, one empty)."""
    device, _ = Device.objects.get_or_create(
        device_id=DEMO_DEVICE_ID,
        defaults={
            "name": "Demo machine",
            "transport": Transport.WIFI,
            "protocol": Protocol.WIFI_DOCUMENTED,
            "slot_count": len(DEMO_PRODUCTS),
            # Approved and bound to this host: the walkthrough (README) plays it with curl.
            "bound_address": DEMO_ADDRESS,
        },
    )
    # Not in the insert: a machine registering meanwhile may take the one active place.
    activate_if_none_active(device)
    ensure_slots(device=device, count=device.slot_count)
    for number, (name, sku, price, quantity) in enumerate(DEMO_PRODUCTS, start=1):
        product, _ = Product.objects.get_or_create(
            sku=sku, defaults={"name": name, "price": Decimal(price)}
        )
        slot = Slot.objects.get(device=device, number=number)
        Slot.objects.filter(pk=slot.pk).update(product=product, capacity=10)
        set_stock(slot=slot, quantity=quantity, reason=MovementReason.RESTOCK, note="demo data")
    return device


# `make demo`: the machines the simulators play (see Procfile.demo).
DEMO_FLEET = [
    ("ESP32_020000000001", "Demo WiFi machine 1", Transport.WIFI, Protocol.WIFI_V2),
    ("ESP32_020000000002", "Demo WiFi machine 2", Transport.WIFI, Protocol.WIFI_V2),
    ("ESP32_USB_DEMO01", "Demo USB machine", Transport.SERIAL, Protocol.SERIAL),
]


@transaction.atomic
def load_demo_fleet(*, stock: bool = True) -> list[Device]:
    """The simulated machines of ``make demo``, each slot stocked once (idempotent).

    ``stock=False``: the machines, their slots and products only (the demo history then
    writes each slot's ledger)."""
    devices = []
    for device_id, name, transport, protocol in DEMO_FLEET:
        # The simulator may have registered the machine already: fill it all the same.
        device, _ = Device.objects.get_or_create(
            device_id=device_id,
            defaults={"name": name, "transport": transport, "protocol": protocol},
        )
        if transport == Transport.WIFI and not (device.approved and device.bound_address):
            # Its simulator runs on this host; it may have announced itself (pending) first.
            Device.objects.filter(pk=device.pk).update(
                approved=True, bound_address=DEMO_ADDRESS, moved_to=None, moved_at=None
            )
            device.refresh_from_db()
        ensure_slots(device=device, count=device.slot_count)
        for number, (product_name, sku, price, _quantity) in enumerate(DEMO_PRODUCTS, start=1):
            product, _ = Product.objects.get_or_create(
                sku=sku, defaults={"name": product_name, "price": Decimal(price)}
            )
            slot = Slot.objects.get(device=device, number=number)
            if slot.product_id is None:
                Slot.objects.filter(pk=slot.pk).update(product=product, capacity=10)
            if stock and not slot.movements.exists():  # once, never behind staff's back
                set_stock(slot=slot, quantity=8, reason=MovementReason.RESTOCK, note="demo data")
        devices.append(device)
    return devices
