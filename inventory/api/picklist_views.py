"""``GET /api/v1/picklist``: what to load per machine and slot, and what the van carries
(``inventory.picklist``), as JSON or CSV.

A transport: it resolves the request's route, location or machines within what the user may
see (``devices.selectors``: a Driver only their routes), then calls the selector once.
"""

from django.http import HttpResponse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.selectors import (
    canonical_id,
    locations_visible_to,
    machines_visible_to,
    routes_visible_to,
)
from inventory import picklist
from vending_site.auth import roles
from vending_site.http import tables
from vending_site.http.errors import InvalidRequest, NotFound

from . import docs

KINDS = ("route", "location", "machine")
MAX_MACHINES = 100  # machine= repeated at most this often
_MAX_ID_DIGITS = 9  # fits every database's integer primary key


class PickListSelection:
    """What one request asks a pick list of: ``kwargs`` for :func:`inventory.picklist.pick_list`
    and a name for a download."""

    def __init__(self, kwargs: dict, name: str) -> None:
        self.kwargs = kwargs
        self.name = name


def resolve_selection(user, params) -> PickListSelection:
    """The one kind of selection in ``params`` (``route``, ``location`` or ``machine``
    repeated), checked against what ``user`` may see. 400 when none or several kinds are
    given or a value is malformed; 404 for an unknown route, location or machine, and for one
    a Driver does not drive (the same answer, so nothing is revealed)."""
    given = [kind for kind in KINDS if kind in params]
    if len(given) != 1:
        got = " and ".join(given) if given else "none"
        raise InvalidRequest(
            f"Give exactly one of route, location or machine (repeated), got {got}."
        )
    kind = given[0]
    if kind == "machine":
        return _machines(user, params.getlist("machine"))
    raw = params.get(kind, "")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_ID_DIGITS):
        raise InvalidRequest(f"{kind} must be the {kind}'s id (a whole number), not {raw[:20]!r}.")
    pk = int(raw)
    visible = routes_visible_to(user) if kind == "route" else locations_visible_to(user)
    name = visible.filter(pk=pk).values_list("name", flat=True).first()
    if name is None:
        raise NotFound(f"No {kind} {pk}.", **{kind: pk})
    return PickListSelection({kind: pk}, f"{kind}-{pk}")


def _machines(user, raws: list[str]) -> PickListSelection:
    if len(raws) > MAX_MACHINES:
        raise InvalidRequest(f"At most {MAX_MACHINES} machines per pick list, not {len(raws)}.")
    wanted = list(dict.fromkeys(canonical_id(raw) for raw in raws))  # in order, once each
    seen = set(
        machines_visible_to(user).filter(device_id__in=wanted).values_list("device_id", flat=True)
    )
    missing = [device_id for device_id in wanted if device_id not in seen]
    if missing:
        raise NotFound(f"No machine {missing[0]} is registered.", device_id=missing[0])
    return PickListSelection({"machines": wanted}, "machines")


def csv_response(picks: picklist.PickList, name: str) -> HttpResponse:
    day = picks.visit or picks.today
    return tables.csv_response(picklist.csv_rows(picks), f"picklist-{name}-{day}.csv")


class PickListView(APIView):
    """``GET /api/v1/picklist?route=<id>`` (or ``location=<id>``, or ``machine=<id>``
    repeated), optionally ``visit=YYYY-MM-DD``: the pick list, JSON or CSV."""

    permission_classes = (roles.requires("inventory.view_slot"),)
    content_negotiation_class = tables.JSONOnlyNegotiation

    @docs.PICKLIST
    def get(self, request: Request) -> Response | HttpResponse:
        params = request.query_params
        as_csv = tables.wants_csv(request)
        selection = resolve_selection(request.user, params)
        visit = picklist.parse_visit(params.get("visit"))
        picks = picklist.pick_list(**selection.kwargs, visit=visit)
        if as_csv:
            return csv_response(picks, selection.name)
        return Response(picklist.as_dict(picks))
