"""``/sales/``: what sold, for staff with ``transactions.view_sales``.

Rendered on the server from ``transactions.reports.sales_report`` (four reports: by machine,
product, day and slot; one query each), so the page works without JavaScript. The period is a
preset (``?period=today|7d|30d``, 7 days by default) or whole days ``?from=YYYY-MM-DD&to=...``
(both ends inclusive, the server's time zone), compared with the period of equal length
before it.

A slot *stands out* (a weak motor, a jammed spiral) when, in the period, it was tried at
least :data:`WEAK_MIN_ATTEMPTS` times (succeeded + failed), failed at least
:data:`WEAK_MIN_RATE` of them, and at least :data:`WEAK_FLEET_FACTOR` times the fleet's
failure rate over the same period. The floor on attempts keeps one unlucky vend from
flagging a slot; the floor on the rate keeps a fleet that almost never fails from flagging
every slot with a single failure; the factor keeps a fleet-wide cause (a bad day on the
network) from flagging every slot at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from inventory.models import Slot
from transactions import reports
from vending_site.http.dates import local_today
from vending_site.http.errors import InvalidRequest

from .access import staff_page

NO_FIGURE = "\N{EN DASH}"  # a rate of nothing tried
PRESETS = {"today": ("Today", 1), "7d": ("7 days", 7), "30d": ("30 days", 30)}
DEFAULT_PRESET = "7d"
TOP_PRODUCTS = 8
WEAK_MIN_ATTEMPTS = 3
WEAK_MIN_RATE = 0.20
WEAK_FLEET_FACTOR = 2
CSV_GROUPS = (
    ("machine", "Per machine"),
    ("product", "Per product"),
    ("slot", "Per slot"),
    ("day", "Per day"),
)
REPORT_URL = "/api/v1/reports/sales"
AXIS_STEPS = tuple(
    Decimal(step) for step in ("1", "1.2", "1.5", "2", "2.5", "3", "4", "5", "6", "8", "10")
)


def money(amount: str | Decimal) -> str:
    """``1234.5`` as ``1,234.50`` (the currency code is shown beside it)."""
    return f"{Decimal(amount):,.2f}"


def percent(rate: float | None) -> str:
    return NO_FIGURE if rate is None else f"{rate * 100:.1f}%"


@dataclass(frozen=True)
class Change:
    """A figure against the previous period's, in words a reader takes in at a glance."""

    text: str
    tone: str  # "good", "bad" or "flat": the colour
    direction: str  # "up", "down" or "flat"


def change(now: float | Decimal, before: float | Decimal, *, up_is_good: bool = True) -> Change:
    """The relative change from ``before`` to ``now`` (``+12%``), ``new`` from nothing."""
    now, before = Decimal(str(now)), Decimal(str(before))
    if now == before:
        return Change("no change", "flat", "flat")
    direction = "up" if now > before else "down"
    tone = "good" if (direction == "up") == up_is_good else "bad"
    if before == 0:
        return Change("new", tone, direction)
    relative = (now - before) / before * 100
    return Change(f"{relative:+.0f}%", tone, direction)


def rate_change(now: float | None, before: float | None) -> Change:
    """A failure rate's change in percentage points (a rise is bad)."""
    if now is None or before is None:
        return Change("no change" if now == before else NO_FIGURE, "flat", "flat")
    points = (now - before) * 100
    if abs(points) < 0.05:
        return Change("no change", "flat", "flat")
    direction = "up" if points > 0 else "down"
    return Change(f"{points:+.1f} pt", "bad" if points > 0 else "good", direction)


def choose_period(params, *, today: date) -> tuple[str, reports.Period]:
    """(the preset's key, or ``custom``; the period) a request asks for, or
    :class:`InvalidRequest` naming what is wrong."""
    if params.get("from") or params.get("to"):
        return "custom", reports.parse_period(params.get("from"), params.get("to"), today=today)
    key = params.get("period") or DEFAULT_PRESET
    if key not in PRESETS:
        raise InvalidRequest(
            f"period must be one of {', '.join(PRESETS)} (or give from and to), not {key[:20]!r}."
        )
    days = PRESETS[key][1]
    return key, reports.Period(today - timedelta(days=days - 1), today)


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k at or above ``value`` (an
    axis' top: the tallest bar fills most of the chart); 1 for 0."""
    if value <= 0:
        return Decimal(1)
    scale = Decimal(1)
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in AXIS_STEPS:
        if scale * step >= value:
            return scale * step
    return scale * 10  # pragma: no cover - the loop's 10 always answers


def revenue_bars(period: reports.Period, report: dict) -> dict:
    """The chart of ``report`` (grouped by day, or by hour for a one-day period): one bar per
    day of ``period`` (per hour of the day), a bar without sales at 0, heights in percent of
    the axis' top, and the axis' labels."""
    if report["group_by"] == "hour":
        # Keyed by the local hour; a day that leaves summer time has one hour twice: added up.
        slots: dict[int, dict] = {hour: _zero_bar() for hour in range(24)}
        for row in report["rows"]:
            _add_bar(slots[datetime.fromisoformat(row["hour"]).hour], row)
        labels = [f"{hour:02d}:00" for hour in slots]
        figures = list(slots.values())
    else:
        by_day = {row["day"]: row for row in report["rows"]}
        days = [period.first + timedelta(days=n) for n in range(period.days)]
        figures = []
        for day in days:
            bar = _zero_bar()
            if day.isoformat() in by_day:
                _add_bar(bar, by_day[day.isoformat()])
            figures.append(bar)
        labels = [f"{day:%a} {day.day} {day:%b}" for day in days]
    top = nice_ceiling(max((bar["amount"] for bar in figures), default=Decimal(0)))
    bars = []
    for index, (label, bar) in enumerate(zip(labels, figures, strict=True)):
        height = float(bar["amount"] / top * 100)
        bars.append(
            {
                **bar,
                "label": label,
                "x": f"{index + 0.15:.2f}",
                "slot_x": str(index),
                "y": f"{100 - height:.3f}",
                "height": f"{height:.3f}",
                "revenue": money(bar["amount"]),
            }
        )
    return {
        "bars": bars,
        "count": len(bars),
        "by": report["group_by"],
        "top": money(top),
        "middle": money(top / 2),
        "first": labels[0],
        "last": labels[-1],
        "best": max(bars, key=lambda bar: bar["amount"]),
    }


def _zero_bar() -> dict:
    return {"amount": Decimal(0), "vends": 0, "failed": 0}


def _add_bar(bar: dict, row: dict) -> None:
    bar["amount"] += Decimal(row["revenue"])
    bar["vends"] += row["vends"]
    bar["failed"] += row["failed"]


def standout_slots(slot_rows: list[dict], fleet_rate: float | None) -> list[dict]:
    """The slots whose failure rate stands out (see the module's docstring), worst first."""
    fleet = fleet_rate or 0.0
    flagged = []
    for row in slot_rows:
        attempts = row["vends"] + row["failed"]
        rate = row["failure_rate"]
        if (
            attempts >= WEAK_MIN_ATTEMPTS
            and rate is not None
            and rate >= WEAK_MIN_RATE
            and rate >= WEAK_FLEET_FACTOR * fleet
        ):
            flagged.append({**row, "attempts": attempts, "rate": percent(rate)})
    flagged.sort(
        key=lambda row: (-row["failure_rate"], -row["failed"], row["machine"], row["slot"])
    )
    if flagged:  # their products, in one query
        which = Q()
        for row in flagged:
            which |= Q(device__device_id=row["machine"], number=row["slot"])
        names = {
            (device_id, number): (machine or "", product or "")
            for device_id, number, machine, product in Slot.objects.filter(which).values_list(
                "device__device_id", "number", "device__name", "product__name"
            )
        }
        for row in flagged:
            row["machine_name"], row["product"] = names.get((row["machine"], row["slot"]), ("", ""))
    return flagged


def _totals(report: dict) -> list[dict]:
    now, before = report["totals"], report["previous"]["totals"]
    currency = report["currency"]
    return [
        {
            "name": "Vends",
            "value": f"{now['vends']:,}",
            "change": change(now["vends"], before["vends"]),
            "before": f"{before['vends']:,}",
        },
        {
            "name": "Revenue",
            "value": f"{currency} {money(now['revenue'])}",
            "change": change(Decimal(now["revenue"]), Decimal(before["revenue"])),
            "before": f"{currency} {money(before['revenue'])}",
        },
        {
            "name": "Failed",
            "value": f"{now['failed']:,}",
            "change": change(now["failed"], before["failed"], up_is_good=False),
            "before": f"{before['failed']:,}",
        },
        {
            "name": "Failure rate",
            "value": percent(now["failure_rate"]),
            "change": rate_change(now["failure_rate"], before["failure_rate"]),
            "before": percent(before["failure_rate"]),
        },
    ]


def _with_changes(rows: list[dict]) -> list[dict]:
    return [
        {
            **row,
            "revenue_text": money(row["revenue"]),
            "rate": percent(row["failure_rate"]),
            "change": change(Decimal(row["revenue"]), Decimal(row["previous"]["revenue"])),
        }
        for row in rows
    ]


def _top_products(rows: list[dict]) -> list[dict]:
    top = _with_changes(rows[:TOP_PRODUCTS])
    best = max((Decimal(row["revenue"]) for row in top), default=Decimal(0))
    for row in top:
        row["share"] = f"{Decimal(row['revenue']) / best * 100:.2f}" if best else "0"
    return top


def _csv_links(period: reports.Period) -> list[dict]:
    dates = {"from": period.first.isoformat(), "to": period.last.isoformat()}
    links = []
    for group, label in CSV_GROUPS:
        query = urlencode({**dates, "group_by": group, "format": "csv"})
        links.append({"label": label, "url": f"{REPORT_URL}?{query}"})
    return links


@staff_page("transactions.view_sales", nav="sales")
def sales_page(request: HttpRequest) -> HttpResponse:
    """``GET /sales/?period=today|7d|30d`` or ``?from=YYYY-MM-DD&to=YYYY-MM-DD``."""
    today = local_today()
    context = {
        "nav": "sales",
        "presets": [{"key": key, "label": label} for key, (label, _) in PRESETS.items()],
        "today": today,
        "from_value": request.GET.get("from", ""),
        "to_value": request.GET.get("to", ""),
    }
    try:
        chosen, period = choose_period(request.GET, today=today)
    except InvalidRequest as exc:
        context.update(chosen="custom", error=exc.message)
        return render(request, "staff/sales.html", context, status=400)
    by_machine = reports.sales_report(period=period, group_by="machine")
    by_product = reports.sales_report(period=period, group_by="product")
    by_time = reports.sales_report(period=period, group_by="hour" if period.days == 1 else "day")
    by_slot = reports.sales_report(period=period, group_by="slot")
    previous = period.previous()
    context.update(
        chosen=chosen,
        period=period,
        previous=previous,
        from_value=period.first.isoformat(),
        to_value=period.last.isoformat(),
        currency=by_machine["currency"],
        time_zone=by_machine["time_zone"],
        totals=_totals(by_machine),
        chart=revenue_bars(period, by_time),
        products=_top_products(by_product["rows"]),
        product_count=len(by_product["rows"]),
        machines=_with_changes(by_machine["rows"]),
        weak=standout_slots(by_slot["rows"], by_machine["totals"]["failure_rate"]),
        weak_rule={
            "attempts": WEAK_MIN_ATTEMPTS,
            "rate": f"{WEAK_MIN_RATE:.0%}",
            "factor": WEAK_FLEET_FACTOR,
            "fleet": percent(by_machine["totals"]["failure_rate"]),
        },
        csv_links=_csv_links(period),
    )
    return render(request, "staff/sales.html", context)
