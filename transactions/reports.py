"""Sales reports: what sold, per machine, product, slot, location, route, day or hour, over a
period of days.

One SQL query per report, whatever the number of vends: the period and the previous period of
equal length are read together (``created_at`` from the previous period's first day to the
end of the period, served by the ``(state, created_at)`` index), and every figure is a
conditional aggregate (``COUNT(*) FILTER (WHERE ...)`` on PostgreSQL). Totals are the sum of
the groups, added up here.

A vend counts on the day it was asked for (``created_at``), in the server's time zone
(``TIME_ZONE``). Counted: ``succeeded`` (vends, and their prices as revenue), ``failed``,
``unconfirmed`` and ``expired``; queued, sent and cancelled vends are not sales.

Locations and routes: a vend counts under the location its machine stands at *now*, not when
the vend was asked for (a vend does not record its location), so moving a machine moves its
whole history to the new location and its routes. A machine placed nowhere groups as
``(no location)``; one whose location is on no route as ``(no route)``. A location on two
routes counts its vends in both routes' groups, so the route groups may add up to more than
the totals: the totals count each vend once. Both groupings are the same single query
(grouped by location and route stop, left-joined), so they cost what the machine grouping
does plus two joins on primary and foreign keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, DecimalField, Max, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate, TruncHour

from vending_site.http.dates import local_today, parse_day, server_zone
from vending_site.http.errors import InvalidRequest
from vending_site.http.spreadsheet import safe_cell

from .choices import TransactionState
from .models import Transaction

S = TransactionState
COUNTED_STATES = (S.SUCCEEDED, S.FAILED, S.UNCONFIRMED, S.EXPIRED)
GROUPS = ("machine", "product", "slot", "location", "route", "day", "hour")
NO_LOCATION, NO_ROUTE = "(no location)", "(no route)"
MAX_DAYS = 366
DEFAULT_DAYS = 7
FIGURES = ("vends", "revenue", "failed", "unconfirmed", "expired", "failure_rate")
_MONEY = DecimalField(max_digits=16, decimal_places=2)
_CENT = Decimal("0.01")


def currency() -> str:
    """The ISO 4217 code money is shown in (the ``CURRENCY`` setting)."""
    return settings.CURRENCY


@dataclass(frozen=True)
class Period:
    """Whole days, ``first`` to ``last`` inclusive, in the server's time zone."""

    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period of equal length that ends the day before this one starts."""
        return Period(self.first - timedelta(days=self.days), self.first - timedelta(days=1))

    def bounds(self) -> tuple[datetime, datetime]:
        """[start, end): local midnight of ``first`` to local midnight after ``last``."""
        zone = server_zone()
        start = datetime.combine(self.first, time.min, tzinfo=zone)
        end = datetime.combine(self.last + timedelta(days=1), time.min, tzinfo=zone)
        return start, end


def parse_period(first: str | None, last: str | None, *, today: date | None = None) -> Period:
    """The period a request names (``from``/``to``, YYYY-MM-DD, both optional: the last
    ``DEFAULT_DAYS`` days to today), or :class:`InvalidRequest` saying what is wrong."""
    today = today or local_today()
    last_day = parse_day("to", last) if last else None
    first_day = parse_day("from", first) if first else None
    if last_day is None:
        last_day = today if first_day is None else max(today, first_day)
    if first_day is None:
        first_day = last_day - timedelta(days=DEFAULT_DAYS - 1)
    if first_day > last_day:
        raise InvalidRequest(f"from ({first_day}) is after to ({last_day}).")
    period = Period(first_day, last_day)
    if period.days > MAX_DAYS:
        raise InvalidRequest(
            f"The period is {period.days} days long; a report covers at most {MAX_DAYS} days."
        )
    return period


def check_group(group_by: str | None) -> str:
    group_by = group_by or "machine"
    if group_by not in GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}, not {group_by[:20]!r}.")
    return group_by


# --- The query ----------------------------------------------------------------------------


def _figures(when: Q | None = None) -> dict:
    """Conditional aggregates of the five counted figures, within ``when`` if given."""

    def of(state: str) -> Q:
        return Q(state=state) & when if when is not None else Q(state=state)

    return {
        "vends": Count("pk", filter=of(S.SUCCEEDED)),
        "revenue": Coalesce(
            Sum("price", filter=of(S.SUCCEEDED), output_field=_MONEY),
            Value(Decimal(0)),
            output_field=_MONEY,
        ),
        "failed": Count("pk", filter=of(S.FAILED)),
        "unconfirmed": Count("pk", filter=of(S.UNCONFIRMED)),
        "expired": Count("pk", filter=of(S.EXPIRED)),
    }


def _keys(group_by: str, zone) -> tuple[dict, tuple[str, ...], dict]:
    """(annotations, GROUP BY fields, extra aggregates) for one grouping."""
    if group_by == "machine":
        return {}, ("device_id", "device__device_id", "device__name"), {}
    if group_by == "slot":
        return {}, ("slot_id", "device__device_id", "slot_number"), {}
    if group_by == "product":
        # The SKU and name copied onto each vend: history stays as it was sold.
        return {}, ("product_sku",), {"product_name_": Max("product_name")}
    if group_by in ("location", "route"):
        # One row per (location, route stop): a location on two routes gives two rows with
        # the same figures; the totals take each location's once (sales_report).
        fields = ("device__location_id", "device__location__name")
        if group_by == "route":
            fields += ("device__location__stops__route_id", "device__location__stops__route__name")
        return {}, fields, {}
    if group_by == "day":
        return {"day": TruncDate("created_at", tzinfo=zone)}, ("day",), {}
    return {"hour": TruncHour("created_at", tzinfo=zone)}, ("hour",), {}


def sales_report(*, period: Period, group_by: str) -> dict:
    """The report: per group the figures of ``period`` (and, for every grouping but day and
    hour, of the previous period too), totals, and the previous period's totals. One query."""
    zone = server_zone()
    before = period.previous()
    start, end = period.bounds()
    previous_start, _ = before.bounds()
    annotations, fields, extra = _keys(group_by, zone)
    by_time = group_by in ("day", "hour")
    if by_time:
        aggregates = _figures()
    else:
        current, earlier = Q(created_at__gte=start), Q(created_at__lt=start)
        aggregates = {
            **_figures(current),
            **{f"previous_{k}": v for k, v in _figures(earlier).items()},
        }
    rows = (
        Transaction.objects.filter(
            state__in=COUNTED_STATES, created_at__gte=previous_start, created_at__lt=end
        )
        .annotate(**annotations)
        .values(*fields)
        .annotate(**extra, **aggregates)
        .order_by()
    )
    groups, timed, totals, previous = [], [], _zero(), _zero()
    counted: set = set()  # the locations whose figures are in the totals already
    routes: dict[tuple, tuple[dict, dict]] = {}
    for row in rows:
        if by_time:
            key = row[group_by]
            if group_by == "hour":
                key = key.astimezone(zone)
            figures = _pick(row)
            in_period = (key if group_by == "day" else key.date()) >= period.first
            _add(totals if in_period else previous, figures)
            if in_period:
                timed.append((key, {group_by: key.isoformat(), **_finish(figures)}))
            continue
        now, then = _pick(row), _pick(row, "previous_")
        location = row.get("device__location_id", _NO_KEY)
        if location is _NO_KEY or location not in counted:
            counted.add(location)
            _add(totals, now)
            _add(previous, then)
        if group_by == "route":
            _add_to_route(routes, row, now, then)
            continue
        groups.append({**_label(group_by, row), **_finish(now), "previous": _finish(then)})
    for (route_id, name), (now, then) in routes.items():
        groups.append(
            {"route_id": route_id, "route": name, **_finish(now), "previous": _finish(then)}
        )
    if by_time:  # by the instant, not its text: an hour's offset changes with DST
        groups = [group for _, group in sorted(timed, key=lambda pair: pair[0])]
    else:
        groups.sort(key=_by_revenue)
    return {
        "from": period.first.isoformat(),
        "to": period.last.isoformat(),
        "group_by": group_by,
        "time_zone": settings.TIME_ZONE,
        "currency": currency(),
        "rows": groups,
        "totals": _finish(totals),
        "previous": {
            "from": before.first.isoformat(),
            "to": before.last.isoformat(),
            "totals": _finish(previous),
        },
    }


_NO_KEY = object()


def _add_to_route(routes: dict, row: dict, now: dict, then: dict) -> None:
    """Add a (location, route) row to its route's group; every location on no route, and
    every machine placed nowhere, adds to the one ``(no route)`` group."""
    route_id = row["device__location__stops__route_id"]
    key = (route_id, row["device__location__stops__route__name"] if route_id else NO_ROUTE)
    into = routes.setdefault(key, (_zero(), _zero()))
    _add(into[0], now)
    _add(into[1], then)


def _label(group_by: str, row: dict) -> dict:
    if group_by == "location":
        location_id = row["device__location_id"]
        name = row["device__location__name"] if location_id else NO_LOCATION
        return {"location_id": location_id, "location": name}
    if group_by == "machine":
        return {"machine": row["device__device_id"], "machine_name": row["device__name"]}
    if group_by == "slot":
        return {"machine": row["device__device_id"], "slot": row["slot_number"]}
    return {"sku": row["product_sku"], "product": row["product_name_"]}


def _by_revenue(group: dict) -> tuple:
    """Highest revenue first, then most vends, then by key (a stable, readable order)."""
    key = tuple(
        str(group.get(name, "")) for name in ("machine", "sku", "slot", "location", "route")
    )
    return (-Decimal(group["revenue"]), -group["vends"], *key)


def _zero() -> dict:
    return {"vends": 0, "revenue": Decimal(0), "failed": 0, "unconfirmed": 0, "expired": 0}


def _pick(row: dict, prefix: str = "") -> dict:
    return {name: row[prefix + name] for name in _zero()}


def _add(into: dict, figures: dict) -> None:
    for name, value in figures.items():
        into[name] += value


def _finish(figures: dict) -> dict:
    """The figures as served: revenue as a decimal string, and the failure rate
    (failed / (succeeded + failed), 4 places; null when neither happened)."""
    settled = figures["vends"] + figures["failed"]
    return {
        "vends": figures["vends"],
        "revenue": str(Decimal(figures["revenue"]).quantize(_CENT)),
        "failed": figures["failed"],
        "unconfirmed": figures["unconfirmed"],
        "expired": figures["expired"],
        "failure_rate": round(figures["failed"] / settled, 4) if settled else None,
    }


# --- CSV ----------------------------------------------------------------------------------

KEY_COLUMNS = {
    "machine": ("machine", "machine_name"),
    "product": ("sku", "product"),
    "slot": ("machine", "slot"),
    "location": ("location_id", "location"),
    "route": ("route_id", "route"),
    "day": ("day",),
    "hour": ("hour",),
}


def csv_rows(report: dict):
    """The report as CSV rows, header first: the group's key columns, the figures, and for
    machine, product, slot, location and route the previous period's vends and revenue
    (a missing location or route id is an empty cell). Names typed by staff cannot start a
    formula (``safe_cell``)."""
    group_by = report["group_by"]
    keys = KEY_COLUMNS[group_by]
    with_previous = group_by not in ("day", "hour")
    extra = ("previous_vends", "previous_revenue") if with_previous else ()
    yield (*keys, *FIGURES, *extra)
    for group in report["rows"]:
        rate = group["failure_rate"]
        values = ["" if group[key] is None else group[key] for key in keys]
        values += [group[name] for name in FIGURES[:-1]] + ["" if rate is None else rate]
        if with_previous:
            values += [group["previous"]["vends"], group["previous"]["revenue"]]
        yield tuple(safe_cell(value) for value in values)
