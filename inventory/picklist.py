"""Pick lists: what to load into each slot of a route's, a location's or some machines' slots,
and what the van must carry (a selector: it only reads).

A slot is on the list when it is enabled and holds a product. Per slot:

- ``quantity`` (units in it now), ``capacity``, ``fill_to`` (the PAR, else the capacity);
- ``to_load`` = ``fill_to - quantity``, never below 0 (a slot above its PAR needs nothing).

With a visit date (``visit``, today or later in the server's time zone, ``TIME_ZONE``) the
list forecasts what sells before the driver gets there:

- ``sold_28d``: units sold from the slot over the 28 whole days before today (today, which
  is not over, is left out). Sold means the ledger's ``vend`` movements (a unit reserved for
  a vend) less its ``refund`` movements (a failed vend's unit coming back): the net units
  that left the slot through vends;
- ``daily_average`` = ``sold_28d / 28``;
- ``expected_by_visit`` = ``daily_average x days until the visit`` (0 days for a visit
  today), shown to one decimal;
- ``at_visit`` = ``quantity - expected_by_visit rounded up to whole units``, never below 0:
  what the driver should find in the slot;
- ``to_load`` = ``fill_to - at_visit``, never below 0: the driver fills the slot to its PAR
  on the visit. It is never more than ``fill_to`` (so never more than the capacity), and
  never less than without a forecast. Rounding the forecast up makes the van carry a unit
  too many rather than one too few.

Worked example: quantity 6, PAR 10, 14 units sold in the 28 days, visit in 3 days: daily
average 0.5, expected 1.5, rounded up 2, at the visit 4, to load 6 (4 without a visit).

Machines come in the route's stop order (for a route), then by device id; slots by number.
Machines with no enabled slot holding a product are not listed. ``totals`` sums ``to_load``
(and ``expected_by_visit``) per product for the van, by product name.

inventory knows no devices or routes: machines are chosen with string lookups through the
slot's device (``device__location__stops__route``); the transport resolves and scopes the
request (a Driver's own routes) before calling :func:`pick_list`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import F, Sum

from vending_site.http.dates import local_today as today
from vending_site.http.dates import server_zone
from vending_site.http.errors import InvalidRequest
from vending_site.http.spreadsheet import safe_cell

from .choices import MovementReason
from .models import Slot, StockMovement

WINDOW_DAYS = 28
MAX_VISIT_DAYS = 366  # a visit further ahead is a typo, not a plan
_TENTH = Decimal("0.1")
_HUNDREDTH = Decimal("0.01")
SOLD_REASONS = (MovementReason.VEND, MovementReason.REFUND)


@dataclass(frozen=True)
class PickSlot:
    number: int
    product_id: int
    product: str
    sku: str
    quantity: int
    capacity: int
    fill_to: int
    to_load: int
    # The forecast (a visit date was given), else None.
    sold_28d: int | None = None
    daily_average: Decimal | None = None
    expected_by_visit: Decimal | None = None
    at_visit: int | None = None


@dataclass
class PickMachine:
    device_id: str
    name: str
    location: str
    stop: int | None  # the location's place on the route (a route's pick list only)
    slots: list[PickSlot] = field(default_factory=list)

    @property
    def to_load(self) -> int:
        return sum(slot.to_load for slot in self.slots)


@dataclass(frozen=True)
class ProductTotal:
    product_id: int
    product: str
    sku: str
    slots: int
    to_load: int
    expected_by_visit: Decimal | None


@dataclass(frozen=True)
class PickList:
    machines: list[PickMachine]
    totals: list[ProductTotal]
    today: date
    visit: date | None
    days_until_visit: int | None
    window_first: date | None  # the sales window's first and last day (a forecast only)
    window_last: date | None

    @property
    def to_load(self) -> int:
        return sum(total.to_load for total in self.totals)


def parse_visit(raw: str | None, *, on: date | None = None) -> date | None:
    """The visit date from a query value (``YYYY-MM-DD``), or ``None`` when absent or blank.
    :class:`InvalidRequest` names the problem: not a date, before today, too far ahead."""
    if raw is None or raw == "":
        return None
    on = on or today()
    try:
        visit = date.fromisoformat(raw) if len(raw) == 10 else None
    except ValueError:
        visit = None
    if visit is None:
        raise InvalidRequest(f"visit must be a date as YYYY-MM-DD, not {raw[:20]!r}.")
    if visit < on:
        raise InvalidRequest(f"visit {visit} is in the past (today is {on}).")
    if (visit - on).days > MAX_VISIT_DAYS:
        raise InvalidRequest(f"visit {visit} is more than {MAX_VISIT_DAYS} days ahead.")
    return visit


def pick_list(
    *,
    route: int | None = None,
    location: int | None = None,
    machines: Iterable[str] | None = None,
    visit: date | None = None,
    on: date | None = None,
) -> PickList:
    """The pick list of one route's machines, one location's, or the named machines
    (canonical device ids): exactly one of ``route``, ``location``, ``machines``. With
    ``visit``, the forecast described in the module's docstring; ``on`` is "today" (the
    server's date unless given). Two queries: the slots, then (with a visit) their sales."""
    if sum(choice is not None for choice in (route, location, machines)) != 1:
        raise ValueError("pick_list needs exactly one of route, location, machines")
    on = on or today()
    if visit is not None and visit < on:
        raise ValueError(f"visit {visit} is before {on}")
    slots = Slot.objects.filter(enabled=True, product__isnull=False)
    if route is not None:
        # The filter and the annotation share one join to the route's stop, so ``stop`` is
        # this route's position of the machine's location.
        slots = slots.filter(device__location__stops__route=route).annotate(
            stop=F("device__location__stops__position")
        )
    elif location is not None:
        slots = slots.filter(device__location=location)
    else:
        slots = slots.filter(device__device_id__in=list(machines))
    columns = [
        "pk",
        "number",
        "quantity",
        "capacity",
        "par",
        "product_id",
        "product__name",
        "product__sku",
        "device__device_id",
        "device__name",
        "device__location__name",
    ]
    rows = list(slots.values(*columns, *(["stop"] if route is not None else [])))
    days = (visit - on).days if visit is not None else None
    first = last = None
    sold: dict[int, int] = {}
    if visit is not None:
        first, last = on - timedelta(days=WINDOW_DAYS), on - timedelta(days=1)
        sold = units_sold(slot_ids=[row["pk"] for row in rows], first=first, last=last)
    machines_by_id: dict[str, PickMachine] = {}
    for row in sorted(rows, key=_machine_order):
        device_id = row["device__device_id"]
        machine = machines_by_id.get(device_id)
        if machine is None:
            machine = machines_by_id[device_id] = PickMachine(
                device_id=device_id,
                name=row["device__name"],
                location=row["device__location__name"] or "",
                stop=row.get("stop"),
            )
        machine.slots.append(_pick_slot(row, days=days, sold=sold.get(row["pk"], 0)))
    machine_list = list(machines_by_id.values())
    return PickList(
        machines=machine_list,
        totals=list(_totals(machine_list, forecast=visit is not None)),
        today=on,
        visit=visit,
        days_until_visit=days,
        window_first=first,
        window_last=last,
    )


def units_sold(*, slot_ids: list[int], first: date, last: date) -> dict[int, int]:
    """Net units each slot sold through vends from day ``first`` to day ``last`` (inclusive,
    server time zone): ``vend`` movements less ``refund`` movements, never below 0."""
    if not slot_ids:
        return {}
    zone = server_zone()
    start = datetime.combine(first, time.min, tzinfo=zone)
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone)
    net = (
        StockMovement.objects.filter(
            slot_id__in=slot_ids,
            reason__in=SOLD_REASONS,
            created_at__gte=start,
            created_at__lt=end,
        )
        .values("slot_id")
        .annotate(net=Sum("delta"))
        .order_by()
    )
    return {row["slot_id"]: max(0, -row["net"]) for row in net}


def _machine_order(row: dict) -> tuple:
    stop = row.get("stop")
    return (stop is None, stop or 0, row["device__device_id"], row["number"])


def _pick_slot(row: dict, *, days: int | None, sold: int) -> PickSlot:
    quantity, capacity = row["quantity"], row["capacity"]
    fill_to = capacity if row["par"] is None else row["par"]
    common = {
        "number": row["number"],
        "product_id": row["product_id"],
        "product": row["product__name"],
        "sku": row["product__sku"],
        "quantity": quantity,
        "capacity": capacity,
        "fill_to": fill_to,
    }
    if days is None:
        return PickSlot(**common, to_load=max(0, fill_to - quantity))
    expected_units = -(-sold * days // WINDOW_DAYS)  # rounded up, in whole units
    at_visit = max(0, quantity - expected_units)
    return PickSlot(
        **common,
        to_load=max(0, fill_to - at_visit),
        sold_28d=sold,
        daily_average=(Decimal(sold) / WINDOW_DAYS).quantize(_HUNDREDTH, ROUND_HALF_UP),
        expected_by_visit=(Decimal(sold * days) / WINDOW_DAYS).quantize(_TENTH, ROUND_HALF_UP),
        at_visit=at_visit,
    )


def _totals(machines: list[PickMachine], *, forecast: bool) -> Iterator[ProductTotal]:
    sums: dict[int, dict] = {}
    for machine in machines:
        for slot in machine.slots:
            entry = sums.setdefault(
                slot.product_id,
                {"product": slot.product, "sku": slot.sku, "slots": 0, "to_load": 0, "expected": 0},
            )
            entry["slots"] += 1
            entry["to_load"] += slot.to_load
            if forecast:
                entry["expected"] += slot.expected_by_visit
    for product_id, entry in sorted(sums.items(), key=lambda item: (item[1]["product"], item[0])):
        yield ProductTotal(
            product_id=product_id,
            product=entry["product"],
            sku=entry["sku"],
            slots=entry["slots"],
            to_load=entry["to_load"],
            expected_by_visit=entry["expected"] if forecast else None,
        )


# --- As JSON and CSV (for the REST view and the page's download) ----------------------------


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def as_dict(picks: PickList) -> dict:
    """The pick list as JSON: every forecast field is null without a visit date."""
    return {
        "today": picks.today.isoformat(),
        "visit": picks.visit.isoformat() if picks.visit else None,
        "days_until_visit": picks.days_until_visit,
        "sales_window": (
            {"from": picks.window_first.isoformat(), "to": picks.window_last.isoformat()}
            if picks.window_first
            else None
        ),
        "to_load": picks.to_load,
        "totals": [
            {
                "product": total.product,
                "sku": total.sku,
                "slots": total.slots,
                "to_load": total.to_load,
                "expected_by_visit": _number(total.expected_by_visit),
            }
            for total in picks.totals
        ],
        "machines": [
            {
                "device_id": machine.device_id,
                "name": machine.name,
                "location": machine.location,
                "stop": machine.stop,
                "to_load": machine.to_load,
                "slots": [
                    {
                        "slot": slot.number,
                        "product": slot.product,
                        "sku": slot.sku,
                        "quantity": slot.quantity,
                        "capacity": slot.capacity,
                        "fill_to": slot.fill_to,
                        "to_load": slot.to_load,
                        "sold_28d": slot.sold_28d,
                        "daily_average": _number(slot.daily_average),
                        "expected_by_visit": _number(slot.expected_by_visit),
                        "at_visit": slot.at_visit,
                    }
                    for slot in machine.slots
                ],
            }
            for machine in picks.machines
        ],
    }


CSV_HEADER = (
    "row",
    "device_id",
    "machine",
    "location",
    "stop",
    "slot",
    "product",
    "sku",
    "quantity",
    "capacity",
    "fill_to",
    "sold_28d",
    "daily_average",
    "expected_by_visit",
    "at_visit",
    "to_load",
)


def csv_rows(picks: PickList) -> Iterator[list]:
    """A header row, then the van's totals (``row`` = ``van``: product, sku, expected,
    to_load), then one ``slot`` row per slot. Empty cells for what a row does not have;
    names and SKUs (typed by staff) cannot start a formula (``safe_cell``)."""

    def blank(value) -> object:
        return "" if value is None else value

    yield list(CSV_HEADER)
    for total in picks.totals:
        yield [safe_cell(cell) for cell in [
            "van", "", "", "", "", "", total.product, total.sku, "", "", "", "", "",
            blank(total.expected_by_visit), "", total.to_load,
        ]]  # fmt: skip
    for machine in picks.machines:
        for slot in machine.slots:
            yield [safe_cell(cell) for cell in [
                "slot", machine.device_id, machine.name, machine.location, blank(machine.stop),
                slot.number, slot.product, slot.sku, slot.quantity, slot.capacity, slot.fill_to,
                blank(slot.sold_28d), blank(slot.daily_average), blank(slot.expected_by_visit),
                blank(slot.at_visit), slot.to_load,
            ]]  # fmt: skip
