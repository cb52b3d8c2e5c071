"""``manage.py demo_traffic``: customers for `make demo`, buying from the online machines."""

import random
import threading
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

from devices.selectors import online_devices
from inventory.models import Slot
from inventory.services import restock_to_capacity
from transactions.services import request_vend
from vending_site.http.errors import DomainError
from vending_site.processes.shutdown import stop_on_signals

CUSTOMER = "demo-customer"


class Command(BaseCommand):
    help = (
        "Every few seconds, vend a random stocked slot of a random online machine through the "
        "same service the REST API uses, and restock a machine whose slots ran empty. For demos: "
        "do not run it against a real fleet."
    )

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=4.0, help="Seconds between vends.")
        parser.add_argument("--duration", type=float, default=0, help="Stop after S seconds.")
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, every: float, duration: float, seed: int | None, **options):
        if every <= 0 or duration < 0:
            raise CommandError("--every must be positive and --duration not negative")
        chooser = random.Random(seed)
        customer, _ = get_user_model().objects.get_or_create(username=CUSTOMER)
        stop = threading.Event()
        stop_on_signals(stop)
        # A deadline, not a threading.Timer: a timer thread is not a daemon, so a SIGTERM
        # before it fired left the process waiting for it for the rest of --duration.
        deadline = time.monotonic() + duration if duration else None
        self.say(f"demo customers: a vend every {every:g} s")
        while not stop.wait(every if deadline is None else min(every, deadline - time.monotonic())):
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                self.one_customer(chooser, customer)
            except DatabaseError as exc:
                self.say(f"database unavailable ({exc}); trying again")
                connection.close()
        self.say("demo customers gone")

    def one_customer(self, chooser: random.Random, customer) -> None:
        devices = list(online_devices())
        if not devices:
            self.say("no machine is online yet")
            return
        device = chooser.choice(devices)
        slots = list(
            Slot.objects.filter(device=device, enabled=True, product__isnull=False, quantity__gt=0)
        )
        if not slots:
            self.restock(device)
            return
        slot = chooser.choice(slots)
        try:
            txn = request_vend(device=device, slot_number=slot.number, user=customer)
        except DomainError as exc:
            self.say(f"{device.device_id} slot {slot.number}: refused ({exc.message})")
            return
        self.say(f"{device.device_id} slot {slot.number}: {txn.product_name} ordered")

    def restock(self, device) -> None:
        """Refill a machine with nothing to sell, and say what was done: a machine with no
        product (or only disabled slots) has nothing to restock, so it is not "restocked"."""
        stocked = Slot.objects.filter(device=device, enabled=True, product__isnull=False)
        filled = sum(restock_to_capacity(slot=slot) is not None for slot in stocked)
        if filled:
            self.say(f"{device.device_id}: sold out, restocked {filled} slot(s)")
        elif not Slot.objects.filter(device=device, product__isnull=False).exists():
            self.say(f"{device.device_id}: no products assigned, nothing to sell")
        else:
            self.say(f"{device.device_id}: sold out, no enabled slot with room to restock")

    def say(self, text: str) -> None:
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (OSError, ValueError):
            pass
