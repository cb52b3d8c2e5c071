"""``/stock/``: the fleet's stock at a glance, for staff with ``inventory.view_slot``.

Every machine the user may see (a Driver: their routes' machines) with its fill %, its low and
empty slots, whether it is online and where it stands; the neediest first (most empty slots,
then most low ones, then the lowest fill %). ``?location=<id>`` and ``?route=<id>`` narrow it.
A fixed number of queries however many machines there are (``inventory.fleet``).
"""

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from devices.models import Device
from devices.selectors import locations_visible_to, machines_visible_to, routes_visible_to
from inventory.fleet import MachineStock, stock_by_machine

from .access import staff_page


@dataclass
class StockRow:
    machine: Device
    stock: MachineStock

    @property
    def need(self) -> tuple:
        """The sort key: most empty slots, then most low, then the lowest fill %; machines
        with nothing to sell last."""
        fill = self.stock.fill_percent
        return (
            -len(self.stock.empty),
            -len(self.stock.low),
            fill is None,
            fill or 0,
            self.machine.device_id,
        )

    @property
    def level(self) -> str:
        """``empty``, ``low`` or ``ok``: the colour the page gives the machine."""
        if self.stock.empty:
            return "empty"
        return "low" if self.stock.low else "ok"


def _chosen(raw: str | None, options) -> object | None:
    """The option whose primary key ``raw`` names, or None (unknown, bad or not visible)."""
    if raw and raw.isdigit():
        return next((option for option in options if option.pk == int(raw)), None)
    return None


@staff_page("inventory.view_slot", nav="stock")
def stock_page(request: HttpRequest) -> HttpResponse:
    """``GET /stock/?location=<id>&route=<id>``: the page, rendered on the server."""
    locations = list(locations_visible_to(request.user).order_by("name"))
    routes = list(routes_visible_to(request.user).order_by("name"))
    location = _chosen(request.GET.get("location"), locations)
    route = _chosen(request.GET.get("route"), routes)
    machines = machines_visible_to(request.user).select_related("location")
    if location is not None:
        machines = machines.filter(location=location)
    if route is not None:
        machines = machines.filter(location__routes=route)
    machines = list(machines.distinct().order_by("device_id"))
    levels = stock_by_machine(machine.pk for machine in machines)
    rows = sorted((StockRow(m, levels[m.pk]) for m in machines), key=lambda row: row.need)
    unknown = [
        name
        for name, raw, chosen in (
            ("location", request.GET.get("location"), location),
            ("route", request.GET.get("route"), route),
        )
        if raw and chosen is None
    ]
    return render(
        request,
        "staff/stock.html",
        {
            "nav": "stock",
            "rows": rows,
            "locations": locations,
            "routes": routes,
            "location": location,
            "route": route,
            "unknown": unknown,
            "summary": {
                "machines": len(rows),
                "empty": sum(1 for row in rows if row.level == "empty"),
                "low": sum(1 for row in rows if row.level == "low"),
                "stocked": sum(
                    1 for row in rows if row.level == "ok" and row.stock.fill_percent is not None
                ),
                "online": sum(1 for row in rows if row.machine.is_online),
            },
        },
    )
