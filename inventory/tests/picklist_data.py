"""A small fleet with hand-computed pick lists, shared by the pick-list tests (selector, REST,
pages).

Route "North" visits Bakery (stop 1), then Harbour (stop 2); route "South" visits Harbour
first, so a machine's stop must be the asked route's. Machines, slots (quantity/capacity/PAR)
and the net units each sold over the 28 days before TODAY (2026-12-07):

    stop 1 Bakery   ESP32_000000000001  slot 1 Cola   0/8  PAR 8    sold 28
                                        slot 2 Water  5/12 PAR 10   sold 10
                    ESP32_000000000003  slot 1 Water 12/12          sold 1
    stop 2 Harbour  ESP32_000000000002  slot 1 Cola   3/10          sold 14 (16 vends, 2 refunds)
                                        (and vends just outside the 28 days)
                                        slot 2 Chips  8/10 PAR 6    sold 0
                                        slot 3 Chips, disabled      (not listed)
                                        slot 4 no product           (not listed)
           Depot    ESP32_000000000009  slot 1 Cola   1/10          (on no route)

Without a visit, to load: 8, 5, 0, 7, 0 (Cola 15, Water 5, Chips 0; 20 in all).
Visit on 2026-12-10 (3 days): expected = sold x 3 / 28, rounded up for the estimate at the
visit, to load = fill_to - at_visit:

    Cola  0/8   sold 28: average 1.00, expected 3.0, at visit 0, load 8
    Water 5/10  sold 10: average 0.36, expected 1.1 (30/28 up to 2), at visit 3, load 7
    Water 12/12 sold 1:  average 0.04, expected 0.1 (3/28 up to 1), at visit 11, load 1
    Cola  3/10  sold 14: average 0.50, expected 1.5 (up to 2), at visit 1, load 9
    Chips 8/6   sold 0:  average 0.00, expected 0.0, at visit 8, load 0

Van: Chips 0 (expected 0.0), Cola 17 (4.5), Water 8 (1.2); 25 in all.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from devices.models import Device, Location, Route, RouteStop
from inventory.choices import MovementReason
from inventory.models import Product, Slot, StockMovement

TODAY = date(2026, 12, 7)
VISIT = date(2026, 12, 10)
ZONE = "Europe/Berlin"  # the tests set TIME_ZONE to it: the window's edges are Berlin's midnights


@dataclass
class Fleet:
    north: Route
    south: Route
    bakery: Location
    harbour: Location
    depot: Location
    machines: dict[str, Device]


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(ZONE))


def _sold(slot: Slot, vends: int, refunds: int = 0, *, today: date) -> None:
    when = _at(today - timedelta(days=5), 12)
    for reason, delta, count in (
        (MovementReason.VEND, -1, vends),
        (MovementReason.REFUND, 1, refunds),
    ):
        StockMovement.objects.bulk_create(
            StockMovement(slot=slot, delta=delta, quantity_after=0, reason=reason, created_at=when)
            for _ in range(count)
        )


def _vend_at(slot: Slot, when: datetime) -> None:
    StockMovement.objects.create(
        slot=slot, delta=-1, quantity_after=0, reason=MovementReason.VEND, created_at=when
    )


def build_fleet(*, driver=None, today: date = TODAY) -> Fleet:
    """The fleet above; ``driver`` drives North. Sales are placed relative to ``today`` (a
    test of a real server passes the server's today)."""
    bakery = Location.objects.create(name="Bakery")
    harbour = Location.objects.create(name="Harbour")
    depot = Location.objects.create(name="Depot")
    north = Route.objects.create(name="North", driver=driver)
    south = Route.objects.create(name="South")
    RouteStop.objects.create(route=north, location=bakery, position=1)
    RouteStop.objects.create(route=north, location=harbour, position=2)
    RouteStop.objects.create(route=south, location=harbour, position=1)
    cola = Product.objects.create(name="Cola", sku="COLA", price="1.50")
    water = Product.objects.create(name="Water", sku="WATER", price="1.00")
    chips = Product.objects.create(name="Chips", sku="CHIPS", price="2.00")
    machines = {}
    for device_id, location, name in (
        ("ESP32_000000000001", bakery, "Bakery front"),
        ("ESP32_000000000002", harbour, "Harbour hall"),
        ("ESP32_000000000003", bakery, "Bakery back"),
        ("ESP32_000000000009", depot, "Depot"),
    ):
        machines[device_id] = Device.objects.create(
            device_id=device_id, name=name, location=location, slot_count=5
        )

    def slot(device_id, number, product, quantity, capacity, par=None, **more) -> Slot:
        return Slot.objects.create(
            device=machines[device_id],
            number=number,
            product=product,
            quantity=quantity,
            capacity=capacity,
            par=par,
            **more,
        )

    _sold(slot("ESP32_000000000001", 1, cola, 0, 8, 8), 28, today=today)
    _sold(slot("ESP32_000000000001", 2, water, 5, 12, 10), 10, today=today)
    _sold(slot("ESP32_000000000003", 1, water, 12, 12), 1, today=today)
    harbour_cola = slot("ESP32_000000000002", 1, cola, 3, 10)
    _sold(harbour_cola, 14, 2, today=today)
    # Inside the 28 days, at their edges: the first minute and the last.
    _vend_at(harbour_cola, _at(today - timedelta(days=28), 0, 0))
    _vend_at(harbour_cola, _at(today, 0) - timedelta(minutes=1))
    # Outside: today itself (00:30 in Berlin is still the 6th in UTC), and the day before the
    # first (23:30 in Berlin is already the 8th in UTC).
    _vend_at(harbour_cola, _at(today, 0, 30))
    _vend_at(harbour_cola, _at(today - timedelta(days=29), 23, 30))
    # Not sales: an adjustment and a restock inside the window.
    for reason, delta in ((MovementReason.ADJUSTMENT, -3), (MovementReason.RESTOCK, 5)):
        StockMovement.objects.create(
            slot=harbour_cola,
            delta=delta,
            quantity_after=0,
            reason=reason,
            created_at=_at(today - timedelta(days=3), 9),
        )
    slot("ESP32_000000000002", 2, chips, 8, 10, 6)
    slot("ESP32_000000000002", 3, chips, 0, 10, enabled=False)
    slot("ESP32_000000000002", 4, None, 0, 10)
    slot("ESP32_000000000009", 1, cola, 1, 10)
    return Fleet(north, south, bakery, harbour, depot, machines)
