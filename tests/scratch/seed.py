"""The child side of the scratch stack, run with DATABASE_URL naming the scratch database:

    python -m tests.scratch.seed setup '{"devices": [...], "stock": [...], "username": "u", ...}'
    python -m tests.scratch.seed report '{"ledger_after_setup": n}'
    python -m tests.scratch.seed fleet '{"devices": n, "keys": n, "stock": n}'

It writes (and reads) through the project's own services, and prints one JSON line.
"""

import json
import os
import sys

from tests.scratch import ROOT


def _setup(devices: list[str], stock: list[int], username: str, password: str) -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from devices.choices import Protocol, Transport
    from devices.services import register_device
    from inventory.choices import MovementReason
    from inventory.models import Product, Slot, StockMovement
    from inventory.services import set_stock
    from vending_site.auth.permissions import VEND_CLIENT_GROUP

    user = get_user_model().objects.create_user(username, password=password)
    user.groups.add(Group.objects.get_or_create(name=VEND_CLIENT_GROUP)[0])  # may use the API
    for device_id in devices:
        device, _ = register_device(
            raw_id=device_id,
            transport=Transport.WIFI,
            protocol=Protocol.WIFI_V2,
            slot_count=len(stock),
            admitted=True,  # the operator's own machines, played on this host
            address="127.0.0.1",
        )
        for number, quantity in enumerate(stock, start=1):
            product, _ = Product.objects.get_or_create(
                sku=f"SIGKILL-{number}", defaults={"name": f"Item {number}", "price": 1}
            )
            slot = Slot.objects.get(device=device, number=number)
            Slot.objects.filter(pk=slot.pk).update(product=product, capacity=max(quantity, 10))
            slot.refresh_from_db()
            set_stock(slot=slot, quantity=quantity, reason=MovementReason.RESTOCK)
    last = StockMovement.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    return {"ledger_after_setup": last}


def _report(ledger_after_setup: int) -> dict:
    from django.db.models import Sum

    from devices.models import Command
    from inventory.models import Slot, StockMovement
    from tests import accounting
    from transactions.models import Transaction, TransactionEvent

    transactions = {
        str(row["id"]): {**row, "id": str(row["id"]), "device": row.pop("device__device_id")}
        for row in Transaction.objects.values(
            "id", "state", "device__device_id", "slot_number", "idempotency_key"
        )
    }
    events: dict[str, list[list[str]]] = {}
    for row in TransactionEvent.objects.order_by("created_at", "pk").values(
        "transaction_id", "from_state", "to_state"
    ):
        events.setdefault(str(row["transaction_id"]), []).append(
            [row["from_state"], row["to_state"]]
        )
    commands = {
        str(row["id"]): {**row, "transaction_id": str(row["transaction_id"])}
        for row in Command.objects.values("id", "state", "transaction_id", "slot", "kind")
    }
    ledger = {
        row["slot_id"]: row["total"]
        for row in StockMovement.objects.filter(pk__gt=ledger_after_setup)
        .values("slot_id")
        .annotate(total=Sum("delta"))
    }
    per_txn_ledger: dict[str, list[int]] = {}
    for row in StockMovement.objects.filter(transaction__isnull=False).values(
        "transaction_id", "delta"
    ):
        per_txn_ledger.setdefault(str(row["transaction_id"]), []).append(row["delta"])
    slots = [
        {
            "device": row["device__device_id"],
            "number": row["number"],
            "quantity": row["quantity"],
            "ledger": ledger.get(row["pk"], 0),
        }
        for row in Slot.objects.values("pk", "device__device_id", "number", "quantity")
    ]
    return {
        "transactions": transactions,
        "events": events,
        "commands": commands,
        "slots": slots,
        "txn_ledger": per_txn_ledger,
        # Each slot's stock by its vends and by its ledger, for tests.accounting.check_stock.
        "accounting": accounting.slot_figures_as_dicts(
            accounting.start_at_movement(ledger_after_setup)
        ),
    }


def device_id(index: int) -> str:
    return f"ESP32_{mac(index).replace(':', '')}"


def mac(index: int) -> str:
    """Locally administered MACs 02:F1:EE:xx:xx:xx, one per simulated device."""
    return "02:F1:EE:" + ":".join(f"{(index >> s) & 0xFF:02X}" for s in (16, 8, 0))


def machine_address(index: int) -> str:
    """The LAN address a simulated machine speaks from: its requests carry it in
    ``X-Forwarded-For`` (as nginx adds it; loopback is a trusted proxy), and it is the
    address the machine is bound to (devices/access.py)."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def _seed_fleet(devices: int, keys: int, stock: int) -> dict:
    """The first machine through the services (register, stock through the ledger); the
    others copied from it in bulk, ledger rows included, so every quantity is explained.
    (The services publish a live event per call: about 0.2 s per machine, too slow for
    2000 of them.)"""
    from django.db import transaction
    from rest_framework_api_key.models import APIKey

    from devices.choices import Protocol, Transport
    from devices.models import Device
    from devices.services import register_device
    from inventory.choices import MovementReason
    from inventory.models import Product, Slot, StockMovement
    from inventory.services import set_stock

    products = [
        Product.objects.get_or_create(
            sku=f"FLEET-{n}", defaults={"name": f"Fleet item {n}", "price": 1}
        )[0]
        for n in range(1, 6)
    ]
    first, _ = register_device(
        raw_id=device_id(0),
        transport=Transport.WIFI,
        protocol=Protocol.WIFI_V2,
        slot_count=5,
        admitted=True,  # the operator's own machines
        address=machine_address(0),
    )
    for slot in Slot.objects.filter(device=first).order_by("number"):
        Slot.objects.filter(pk=slot.pk).update(
            product=products[slot.number - 1], capacity=max(stock, 10)
        )
        slot.refresh_from_db()
        set_stock(slot=slot, quantity=stock, reason=MovementReason.RESTOCK)
    first.refresh_from_db()
    template = {
        field.attname: getattr(first, field.attname)
        for field in Device._meta.concrete_fields
        if field.name not in ("id", "device_id", "mac_address", "is_active")
    }
    slots = list(Slot.objects.filter(device=first).order_by("number"))
    movement = StockMovement.objects.filter(slot=slots[0]).first()
    with transaction.atomic():
        made = Device.objects.bulk_create(
            [
                Device(
                    **{
                        **template,
                        "bound_address": machine_address(index),
                        "last_address": machine_address(index),
                    },
                    device_id=device_id(index),
                    mac_address=mac(index),
                    is_active=False,
                )
                for index in range(1, devices)
            ],
            batch_size=500,
        )
        new_slots = Slot.objects.bulk_create(
            [
                Slot(
                    device=device,
                    number=slot.number,
                    product_id=slot.product_id,
                    quantity=slot.quantity,
                    capacity=slot.capacity,
                    low_stock_threshold=slot.low_stock_threshold,
                )
                for device in made
                for slot in slots
            ],
            batch_size=1000,
        )
        StockMovement.objects.bulk_create(
            [
                StockMovement(
                    slot=slot,
                    delta=slot.quantity,
                    quantity_after=slot.quantity,
                    reason=movement.reason,
                    note="fleet benchmark seed",
                )
                for slot in new_slots
            ],
            batch_size=1000,
        )
    api_keys = [APIKey.objects.create_key(name=f"fleet-bench-{n}")[1] for n in range(keys)]
    return {"keys": api_keys, "devices": devices}


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    import django

    django.setup()
    commands = {"setup": _setup, "report": _report, "fleet": _seed_fleet}
    if argv[0] not in commands:
        raise SystemExit(f"unknown command {argv[0]!r}; one of {', '.join(commands)}")
    result = commands[argv[0]](**json.loads(argv[1]))
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
