"""The pick-list page (``/picklist/``) and the fill page (``/machines/<device_id>/fill``).

Both are transports: the pick list is ``inventory.picklist.pick_list`` for the route or
location chosen (resolved and scoped as the REST endpoint does it,
``inventory.api.picklist_views.resolve_selection``); a fill is one call of
``inventory.services.restock``. A Driver sees only their routes' machines: any other is 404.
"""

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from devices.exceptions import BadDeviceId
from devices.models import Device
from devices.selectors import (
    canonical_id,
    locations_visible_to,
    machines_visible_to,
    routes_visible_to,
)
from inventory import picklist
from inventory.api.picklist_views import resolve_selection
from inventory.exceptions import RestockRefused
from inventory.services import restock
from vending_site.http.errors import InvalidRequest, NotFound

from .access import staff_page

FILL_NOTE = "fill page"


@staff_page("inventory.view_slot", nav="picklist")
def picklist_page(request: HttpRequest) -> HttpResponse:
    """``/picklist/?route=<id>`` (or ``location=<id>``, optionally ``visit=YYYY-MM-DD``):
    the pick list, printable, with the van's totals first. Without a choice, the first
    route the user may see."""
    routes = list(routes_visible_to(request.user).values("pk", "name"))
    locations = list(locations_visible_to(request.user).values("pk", "name"))
    chosen = QueryDict(mutable=True)
    for kind in ("route", "location"):
        value = request.GET.get(kind, "").strip()
        if value:
            chosen[kind] = value
    if not chosen and routes:
        chosen["route"] = str(routes[0]["pk"])
    context = {
        "nav": "picklist",
        "routes": routes,
        "locations": locations,
        "chosen_route": chosen.get("route", ""),
        "chosen_location": chosen.get("location", ""),
        "visit": request.GET.get("visit", "").strip(),
        "today": picklist.today(),
        "can_fill": request.user.has_perm("inventory.restock_slot"),
        "picks": None,
        "error": "",
    }
    status = 200
    if chosen:
        try:
            selection = resolve_selection(request.user, chosen)
            visit = picklist.parse_visit(context["visit"])
            context["picks"] = picklist.pick_list(**selection.kwargs, visit=visit)
        except NotFound as exc:
            raise Http404(exc.message) from exc
        except InvalidRequest as exc:
            context["error"], status = exc.message, 400
        else:
            context["title"] = _title(chosen, routes, locations)
            query = {**chosen.dict(), **({"visit": context["visit"]} if visit else {})}
            context["csv_url"] = (
                reverse("api-v1:picklist") + "?" + urlencode({**query, "format": "csv"})
            )
    return render(request, "staff/picklist.html", context, status=status)


def _title(chosen: QueryDict, routes: list[dict], locations: list[dict]) -> str:
    kind = "route" if "route" in chosen else "location"
    names = {str(row["pk"]): row["name"] for row in (routes if kind == "route" else locations)}
    return f"{kind.capitalize()} {names.get(chosen[kind], chosen[kind])}"


def _visible_machine(request: HttpRequest, device_id: str) -> Device:
    try:
        canonical = canonical_id(device_id)
    except BadDeviceId as exc:
        raise Http404(exc.message) from exc
    device = machines_visible_to(request.user).filter(device_id=canonical).first()
    if device is None:
        raise Http404(f"No machine {canonical} is registered.")
    return device


@staff_page("inventory.restock_slot", nav="picklist")
def fill_page(request: HttpRequest, device_id: str) -> HttpResponse:
    """``/machines/<device_id>/fill``: the machine's pick list with a "loaded" input per
    slot, pre-filled with the units to load. POST records the units loaded through
    ``inventory.services.restock`` (all slots or none) and redirects back here."""
    device = _visible_machine(request, device_id)
    entered: dict[int, str] = {}
    errors: dict[int, str] = {}
    error = ""
    if request.method == "POST":
        loaded, entered, errors = _read_fill(request.POST)
        if not errors and not loaded:
            error = "Nothing was recorded: enter the units you loaded into at least one slot."
        elif not errors:
            try:
                movements = restock(device=device, loaded=loaded, user=request.user, note=FILL_NOTE)
            except RestockRefused as exc:
                error = exc.message
                errors = {int(k): v for k, v in exc.details.get("slots", {}).items() if k.isdigit()}
            else:
                units = sum(movement.delta for movement in movements)
                messages.success(
                    request,
                    f"Recorded {units} unit{'s' * (units != 1)} loaded into "
                    f"{len(movements)} slot{'s' * (len(movements) != 1)}.",
                )
                return redirect(reverse("machine-fill", args=[device.device_id]), permanent=False)
        if errors and not error:
            error = "Nothing was recorded: correct the slots marked below."
    elif request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    picks = picklist.pick_list(machines=[device.device_id])
    slots = picks.machines[0].slots if picks.machines else []
    rows = [
        {
            "slot": slot,
            "room": slot.capacity - slot.quantity,
            "value": entered.get(slot.number, str(slot.to_load)),
            "error": errors.get(slot.number, ""),
        }
        for slot in slots
    ]
    context = {"nav": "picklist", "device": device, "rows": rows, "error": error}
    # A refused fill is the form again, with its errors, as Django's forms answer it: 200 (a
    # 4xx document is a console error in the browser, on the phone that is using the page).
    return render(request, "staff/fill.html", context)


def _read_fill(post: QueryDict) -> tuple[dict[int, int], dict[int, str], dict[int, str]]:
    """The units per slot from the form's ``loaded-<slot>`` fields: ``(loaded, entered,
    errors)``. A blank or 0 is a slot not loaded; anything but a whole number is an error."""
    loaded: dict[int, int] = {}
    entered: dict[int, str] = {}
    errors: dict[int, str] = {}
    for name, value in post.items():
        if not name.startswith("loaded-"):
            continue
        key = name.removeprefix("loaded-")
        if not (key.isascii() and key.isdigit() and len(key) <= 5):
            continue
        number, value = int(key), value.strip()
        entered[number] = value
        if value == "":
            continue
        if not (value.isascii() and value.isdigit() and len(value) <= 6):
            errors[number] = f"Slot {number}: enter a whole number of units (0 or more)."
        elif int(value):
            loaded[number] = int(value)
    return loaded, entered, errors
