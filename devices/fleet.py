"""Where machines stand and who visits them: locations, routes and a machine's place.

Writes only; reads are ``devices.selectors`` (``machines_visible_to`` and its siblings). Each
function owns its database transaction and states what it guarantees. The database guards
the same rules (``Location``'s and ``RouteStop``'s constraints); these give the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from vending_site.auth.roles import DRIVER, OPERATOR
from vending_site.http.errors import DomainError, InvalidRequest, Unprocessable

from .models import Device, Location, Route, RouteStop

LOCATION_FIELDS = ("name", "address", "latitude", "longitude", "contact", "notes")
ROUTE_FIELDS = ("name", "driver", "notes")
MACHINE_FIELDS = ("name", "location")
# The roles whose holders may drive a route (an Operator covers for a driver).
DRIVING_ROLES = (DRIVER, OPERATOR)


class NameTaken(DomainError):
    code = "name_taken"


class NotADriver(Unprocessable):
    code = "not_a_driver"


def _refuse(field: str, message: str) -> InvalidRequest:
    """A 400 shaped like a refused body field: ``errors`` names the field."""
    return InvalidRequest(f"{field}: {message}", errors={field: [message]})


def _check_coordinates(latitude: Decimal | None, longitude: Decimal | None) -> None:
    if (latitude is None) != (longitude is None):
        missing = "longitude" if longitude is None else "latitude"
        raise _refuse(
            missing,
            "latitude and longitude go together: give both, or neither (null both to clear).",
        )


def _save(obj, kind: str) -> None:
    """Save, turning a lost race for a unique name into a 409 rather than a 500."""
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError as exc:
        raise NameTaken(f"A {kind} named {obj.name!r} already exists.", field="name") from exc


@transaction.atomic
def save_location(*, location: Location | None = None, changes: dict[str, Any]) -> Location:
    """Create a location (``location`` None) or change the given fields of one. Coordinates
    are both set or both empty after the change (400 naming the one missing otherwise)."""
    location = location or Location()
    for field, value in changes.items():
        if field not in LOCATION_FIELDS:
            raise _refuse(field, "This field cannot be changed here.")
        setattr(location, field, value)
    _check_coordinates(location.latitude, location.longitude)
    _save(location, "location")
    return location


@transaction.atomic
def delete_location(*, location: Location) -> None:
    """Delete a location: its machines stay, with no location; it leaves every route it was
    on, and the stops after it move up one place (no gap in the order)."""
    routes = list(Route.objects.select_for_update().filter(stops__location=location).order_by("pk"))
    location.delete()
    for route in routes:
        _renumber(route)


def _renumber(route: Route) -> None:
    stops = list(route.stops.order_by("position"))
    # Two passes: positions are unique per route, so move out of the way first.
    for offset, stop in enumerate(stops, start=1):
        stop.position = 10_000 + offset
    RouteStop.objects.bulk_update(stops, ["position"])
    for offset, stop in enumerate(stops, start=1):
        stop.position = offset
    RouteStop.objects.bulk_update(stops, ["position"])


def check_driver(user_id: int | None):
    """The user a route may be given to: an active staff account holding the Driver or the
    Operator role (or a superuser). :class:`NotADriver` (422) otherwise."""
    if user_id is None:
        return None
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        raise NotADriver(f"driver: no user {user_id} exists.", field="driver")
    eligible = (
        user.is_active
        and user.is_staff
        and (user.is_superuser or user.groups.filter(name__in=DRIVING_ROLES).exists())
    )
    if not eligible:
        raise NotADriver(
            f"driver: {user.get_username()} (user {user_id}) is not an active staff account "
            f"holding the {' or '.join(DRIVING_ROLES)} role.",
            field="driver",
        )
    return user


@transaction.atomic
def save_route(
    *,
    route: Route | None = None,
    changes: dict[str, Any],
    stops: Sequence[int] | None = None,
) -> Route:
    """Create a route (``route`` None) or change the given fields of one; ``stops`` (location
    ids in the order of visits), when given, replaces the whole order in the same
    transaction. The driver must pass :func:`check_driver`; a location may appear once."""
    route = route or Route()
    if route.pk is not None:
        # Serialises two writers of one route: the second sees the first's stops.
        Route.objects.select_for_update().filter(pk=route.pk).first()
    for field, value in changes.items():
        if field not in ROUTE_FIELDS:
            raise _refuse(field, "This field cannot be changed here.")
        if field == "driver":
            value = check_driver(value if value is None else getattr(value, "pk", value))
        setattr(route, field, value)
    _save(route, "route")
    if stops is not None:
        _replace_stops(route, list(stops))
    return route


def _replace_stops(route: Route, location_ids: list[int]) -> None:
    seen: set[int] = set()
    for location_id in location_ids:
        if location_id in seen:
            raise _refuse("stops", f"Location {location_id} appears more than once.")
        seen.add(location_id)
    found = set(Location.objects.filter(pk__in=seen).values_list("pk", flat=True))
    missing = [i for i in location_ids if i not in found]
    if missing:
        raise _refuse("stops", f"No location {', '.join(map(str, missing))} exists.")
    route.stops.all().delete()
    RouteStop.objects.bulk_create(
        RouteStop(route=route, location_id=location_id, position=position)
        for position, location_id in enumerate(location_ids, start=1)
    )


@transaction.atomic
def update_machine(*, device: Device, changes: dict[str, Any]) -> Device:
    """Rename a machine or move it to another location (or none). Only these two fields;
    its sales history follows it (reports group by where a machine stands now)."""
    for field in changes:
        if field not in MACHINE_FIELDS:
            raise _refuse(field, "Only name and location can be changed here.")
    for field, value in changes.items():
        setattr(device, field, value)
    device.save(update_fields=list(changes))
    return device


def set_maintenance(*, devices, until: datetime | None) -> int:
    """Put ``devices`` (a queryset) in maintenance until ``until`` (None ends it): their
    alerts are muted meanwhile (``vending_site.alerts.evaluation``). Returns how many."""
    return devices.update(maintenance_until=until)
