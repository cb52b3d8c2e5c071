"""A month of history for `make demo`, so every report, chart and pick list has something to show.

:func:`load_demo_history` puts the demo machines at two locations on one route with a demo
driver, and writes 30 days of vends (mostly succeeded, some failed, one slot with a weak
motor) and the route's restocks every few days. It writes what the services would have
written, in bulk, so it takes about a second instead of the minutes thousands of service
calls would: per vend a transaction, its command, its three state changes and its ledger rows
(``vend`` -1, and ``refund`` +1 when it failed); per restock a ``restock`` row. The ledger adds
up: each slot's quantity is the sum of its movements and each row's ``quantity_after`` is the
running total.

A slot that already has a ledger (a machine stocked before the history was loaded) gets its
history before its first row, closed by an ``adjustment`` to the stock that row started from,
so its later rows stay true. Loaded once: a second call finds its rows (by their note) and
writes nothing. Deterministic: the same seed gives the same month, relative to today.
"""

import math
import random
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction as db_transaction
from django.utils import timezone

from devices.choices import CommandKind, CommandState
from devices.models import Command, Device, Location, Route, RouteStop
from inventory.choices import MovementReason
from inventory.demo import DEMO_DEVICE_ID, DEMO_FLEET, load_demo_fleet
from inventory.models import Slot, StockMovement
from inventory.selectors import price_of
from vending_site.auth.roles import DRIVER

from .choices import TransactionState
from .models import Transaction, TransactionEvent

HISTORY_DAYS = 30
HISTORY_NOTE = "demo history"
HISTORY_CUSTOMER = "demo-customer"  # the same customer as `manage.py demo_traffic`
DRIVER_USERNAME = "driver"
SEED = 16
# Two sites; each demo machine stands at one (ESP32_DEMO too when it exists).
DEMO_LOCATIONS = [
    {
        "name": "Central Station, hall B",
        "address": "Station Square 1, ground floor, next to platform 4",
        "latitude": Decimal("47.378177"),
        "longitude": Decimal("8.540192"),
        "contact": "Station facilities desk, +41 44 000 00 00",
        "notes": "Access through the service door left of the kiosk; badge at the desk.",
    },
    {
        "name": "Riverside Campus, library",
        "address": "Campus Road 12, library foyer",
        "latitude": Decimal("47.376887"),
        "longitude": Decimal("8.548046"),
        "contact": "Library front office, +41 44 000 00 01",
        "notes": "Open 07:00 to 22:00; park in the loading bay for 20 minutes.",
    },
]
PLACES = {
    DEMO_FLEET[0][0]: 0,  # WiFi machine 1
    DEMO_FLEET[2][0]: 0,  # the USB machine
    DEMO_FLEET[1][0]: 1,  # WiFi machine 2
    DEMO_DEVICE_ID: 1,
}
ROUTE_NAME = "Demo route: station and campus"
# The route visits on these weekdays (Monday 0): a restock every three or four days.
VISIT_WEEKDAYS = (1, 4)
VENDS_PER_SLOT_DAY = 1.6  # on a weekday; weekends sell about half
FAILURE_RATE = 0.03
# A slot whose motor is wearing out: its failure rate stands out in the reports.
WEAK_SLOT = (DEMO_FLEET[1][0], 4, 0.25)
FAILURE_REASON = "Motor stalled: the machine reported a failed vend"


@dataclass
class DemoHistory:
    """What :func:`load_demo_history` did."""

    loaded: bool  # False: it was there already
    vends: int = 0
    failed: int = 0
    restocks: int = 0
    days: int = 0
    locations: list[str] = field(default_factory=list)
    route: str = ""
    driver: str = ""
    driver_password: str = ""  # set when the driver account was created now


def history_loaded() -> bool:
    return StockMovement.objects.filter(note__startswith=HISTORY_NOTE).exists()


@db_transaction.atomic
def load_demo_history(*, now: datetime | None = None, seed: int = SEED) -> DemoHistory:
    """Locations, the route and its driver, and 30 days of vends and restocks (once)."""
    now = now or timezone.now()
    load_demo_fleet(stock=False)  # the machines, their slots and products, no stock yet
    devices = list(Device.objects.filter(device_id__in=PLACES).order_by("device_id"))
    locations = _locations(devices)
    driver, password = _driver()
    route = _route(locations, driver)
    summary = DemoHistory(
        loaded=False,
        locations=[location.name for location in locations],
        route=route.name,
        driver=driver.get_username(),
        driver_password=password,
    )
    if history_loaded():
        return summary
    customer, _ = get_user_model().objects.get_or_create(username=HISTORY_CUSTOMER)
    writer = _Writer(rng=random.Random(seed), now=now, customer=customer, driver=driver)
    slots = (
        Slot.objects.filter(device__in=devices, product__isnull=False)
        .select_related("device", "product")
        .order_by("device__device_id", "number")
    )
    for slot in slots:
        writer.slot_history(slot)
    writer.save()
    summary.loaded = True
    summary.vends = writer.vends
    summary.failed = writer.failed
    summary.restocks = writer.restocks
    summary.days = len(writer.days)
    return summary


def _locations(devices: list[Device]) -> list[Location]:
    locations = []
    for fields in DEMO_LOCATIONS:
        location, _ = Location.objects.get_or_create(
            name=fields["name"], defaults={k: v for k, v in fields.items() if k != "name"}
        )
        locations.append(location)
    for device in devices:
        if device.location_id is None:  # a machine staff placed elsewhere stays there
            device.location = locations[PLACES[device.device_id]]
            device.save(update_fields=["location"])
    return locations


def _driver():
    """The demo driver (Driver role): a random password, printed once by the caller and
    kept in DATA_DIR/driver-password.txt, as the admin's is."""
    User = get_user_model()
    driver = User.objects.filter(username=DRIVER_USERNAME).first()
    password = ""
    if driver is None:
        password = secrets.token_urlsafe(12)
        driver = User.objects.create_user(DRIVER_USERNAME, password=password, is_staff=True)
        path = settings.DATA_DIR / "driver-password.txt"
        path.write_text(password + "\n")
        path.chmod(0o600)
    driver.groups.add(Group.objects.get(name=DRIVER))
    return driver, password


def _route(locations: list[Location], driver) -> Route:
    route, created = Route.objects.get_or_create(
        name=ROUTE_NAME,
        defaults={"driver": driver, "notes": "Tuesdays and Fridays, station first."},
    )
    if created:  # a route staff changed since keeps their stops
        RouteStop.objects.bulk_create(
            RouteStop(route=route, location=location, position=position)
            for position, location in enumerate(locations, start=1)
        )
    return route


class _Writer:
    """Simulates each slot day by day and collects the rows, then writes them in bulk."""

    def __init__(self, *, rng: random.Random, now: datetime, customer, driver) -> None:
        self.rng = rng
        self.now = now
        self.customer = customer
        self.driver = driver
        today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
        self.first_day = today - timedelta(days=HISTORY_DAYS - 1)
        self.transactions: list[Transaction] = []
        self.commands: list[Command] = []
        self.events: list[TransactionEvent] = []
        self.movements: list[StockMovement] = []
        self.slot_quantities: dict[int, int] = {}
        self.vends = self.failed = self.restocks = 0
        self.days: set = set()

    def slot_history(self, slot: Slot) -> None:
        first_row = slot.movements.order_by("created_at", "pk").first()
        # Before the slot's own ledger, if it has one: end at the stock that ledger began at.
        end = first_row.created_at - timedelta(minutes=1) if first_row else self.now
        if end <= self.first_day:
            return
        failure = WEAK_SLOT[2] if (slot.device.device_id, slot.number) == WEAK_SLOT[:2] else None
        failure = failure or FAILURE_RATE
        popularity = self.rng.uniform(0.5, 1.5)
        self.done = self.first_day
        price = price_of(slot)
        quantity = 0
        for offset in range(HISTORY_DAYS):
            day = self.first_day + timedelta(days=offset)
            rate = VENDS_PER_SLOT_DAY * popularity * (0.5 if day.weekday() >= 5 else 1.0)
            happenings = [
                (day + timedelta(seconds=self.rng.randint(7 * 3600, 21 * 3600)), "sale")
                for _ in range(self._count(rate))
            ]
            if offset == 0 or day.weekday() in VISIT_WEEKDAYS:
                hour = 8 + PLACES.get(slot.device.device_id, 0)  # the station first
                happenings.append((day.replace(hour=hour, minute=30), "visit"))
            for at, what in sorted(happenings):
                if at >= end:
                    continue
                if what == "visit":
                    if quantity < slot.fill_to:
                        quantity = self.move(slot, at, slot.fill_to - quantity, quantity)
                        self.restocks += 1
                elif quantity > 0:
                    # A machine vends one at a time: a sale waits for the one before it.
                    at = max(at, self.done + timedelta(seconds=1))
                    fails = self.rng.random() < failure
                    if at < end:
                        quantity = self.vend(slot, at, price, quantity, fails)
        if first_row is not None:
            before = first_row.quantity_after - first_row.delta
            if quantity != before:
                quantity = self.move(
                    slot, end, before - quantity, quantity, reason=MovementReason.ADJUSTMENT
                )
        else:
            self.slot_quantities[slot.pk] = quantity

    def _count(self, rate: float) -> int:
        """A Poisson-distributed number of sales (Knuth's method; rates are small)."""
        limit, count, product = math.exp(-rate), 0, self.rng.random()
        while product > limit and count < 50:
            count += 1
            product *= self.rng.random()
        return count

    def move(self, slot, at, delta, quantity, *, reason=MovementReason.RESTOCK, txn=None) -> int:
        quantity += delta
        restock = reason == MovementReason.RESTOCK
        self.movements.append(
            StockMovement(
                slot=slot,
                delta=delta,
                quantity_after=quantity,
                reason=reason,
                transaction=txn,
                user=self.driver if restock else self.customer if txn else None,
                note=f"{HISTORY_NOTE}: route visit" if restock else HISTORY_NOTE,
                created_at=at,
            )
        )
        return quantity

    def vend(self, slot: Slot, at: datetime, price, quantity: int, fails: bool) -> int:
        sent = at + timedelta(seconds=self.rng.uniform(0.5, 2.0))
        done = sent + timedelta(seconds=self.rng.uniform(3.0, 8.0))
        self.done = done
        state = TransactionState.FAILED if fails else TransactionState.SUCCEEDED
        txn = Transaction(
            id=uuid.UUID(int=self.rng.getrandbits(128), version=4),
            device=slot.device,
            slot=slot,
            slot_number=slot.number,
            product=slot.product,
            product_name=slot.product.name,
            product_sku=slot.product.sku,
            price=price,
            state=state,
            failure_reason=FAILURE_REASON if fails else "",
            requested_by=self.customer,
            created_at=at,
            sent_at=sent,
            completed_at=done,
            updated_at=done,
        )
        self.transactions.append(txn)
        self.commands.append(
            Command(
                device=slot.device,
                kind=CommandKind.VEND,
                slot=slot.number,
                state=CommandState.COMPLETED,
                transaction=txn,
                created_at=at,
                expires_at=at + timedelta(seconds=settings.VEND_QUEUE_TTL),
                sent_at=sent,
                completed_at=done,
            )
        )
        outcome = FAILURE_REASON if fails else "Item dispensed successfully"
        for from_state, to_state, when, note in (
            ("", TransactionState.QUEUED, at, "vend requested"),
            (TransactionState.QUEUED, TransactionState.SENT, sent, "delivered to device"),
            (TransactionState.SENT, state, done, outcome),
        ):
            self.events.append(
                TransactionEvent(
                    transaction=txn,
                    from_state=from_state,
                    to_state=to_state,
                    note=note,
                    created_at=when,
                )
            )
        quantity = self.move(slot, at, -1, quantity, reason=MovementReason.VEND, txn=txn)
        if fails:
            quantity = self.move(slot, done, 1, quantity, reason=MovementReason.REFUND, txn=txn)
            self.failed += 1
        self.vends += 1
        self.days.add(timezone.localtime(at).date())
        return quantity

    def save(self) -> None:
        batch = 500
        Transaction.objects.bulk_create(self.transactions, batch_size=batch)
        Command.objects.bulk_create(self.commands, batch_size=batch)
        TransactionEvent.objects.bulk_create(self.events, batch_size=batch)
        StockMovement.objects.bulk_create(self.movements, batch_size=batch)
        for pk, quantity in self.slot_quantities.items():
            Slot.objects.filter(pk=pk).update(quantity=quantity)
