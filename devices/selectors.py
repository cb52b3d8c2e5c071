"""Reads of devices and commands."""

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone

from vending_site.auth.roles import is_route_bound
from vending_site.backends.statements import Select

from .choices import CommandState
from .exceptions import BadDeviceId, NoActiveDevice, UnknownDevice
from .models import Command, Device, Location, Route
from .protocol import InvalidDeviceId, normalize_device_id

# A device by its canonical id: every vend (get_device) and every confirmation reads it,
# so its SELECT is compiled once (vending_site.backends.statements). device_id is unique.
DEVICE_BY_ID = Select(
    lambda device_id: Device.objects.filter(device_id=device_id).order_by()[:1],
    device_id=Device._meta.get_field("device_id"),
)


def online_cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER)


def online_devices() -> QuerySet[Device]:
    return Device.objects.filter(last_seen__gte=online_cutoff()).exclude(
        disconnected_at__gte=F("last_seen")
    )


def canonical_id(raw: str) -> str:
    """The canonical id, or :class:`BadDeviceId` with the reason."""
    try:
        return normalize_device_id(raw)
    except InvalidDeviceId as exc:
        raise BadDeviceId(f"Invalid device id {raw!r}: {exc}.") from exc


def get_device(raw_id: str) -> Device:
    """The device for any spelling of its id, or :class:`UnknownDevice`."""
    device_id = canonical_id(raw_id)
    device = DEVICE_BY_ID.first(device_id=device_id)
    if device is None:
        raise UnknownDevice(f"No device {device_id} is registered.", device_id=device_id)
    return device


def active_device() -> Device:
    device = Device.objects.filter(is_active=True).first()
    if device is None:
        raise NoActiveDevice("No device was given and no device is selected as active.")
    return device


def _device_for_poll_queryset(device_id: str) -> QuerySet[Device]:
    pending = Command.objects.filter(device=OuterRef("pk"), state=CommandState.QUEUED)
    return (
        Device.objects.annotate(has_pending=Exists(pending))
        .filter(device_id=device_id)
        .order_by()[:1]
    )


# Building and compiling that queryset, then building the model through the queryset
# machinery, was most of an idle poll's time (the query itself runs in tens of microseconds;
# bench/poll_profile.py): compiled once per database (vending_site.backends.statements).
_DEVICE_FOR_POLL = Select(_device_for_poll_queryset, device_id=Device._meta.get_field("device_id"))


def device_for_poll(device_id: str) -> Device | None:
    """The polling device with ``has_pending`` annotated, in one indexed query."""
    return _DEVICE_FOR_POLL.first(device_id=device_id)


def poll_states(first: str, last: str, fields: Sequence[str]) -> dict[str, tuple]:
    """``fields`` (attribute names, as ``device_for_poll`` reads them) of every machine whose
    ``device_id`` lies between ``first`` and ``last`` (both included), by ``device_id``: one
    range scan of the unique index, with two parameters however many machines it spans."""
    rows = (
        Device.objects.filter(device_id__gte=first, device_id__lte=last)
        .order_by()
        .values_list("device_id", *fields)
    )
    return {row[0]: row[1:] for row in rows}


def machines_with_pending_commands() -> set[str]:
    """The ids of the machines a command is queued for (the ``command_state_expiry`` index:
    a few rows, however large the fleet)."""
    queued = Command.objects.filter(state=CommandState.QUEUED).order_by()
    return set(queued.values_list("device__device_id", flat=True).distinct())


def pending_commands(device: Device) -> QuerySet[Command]:
    return Command.objects.filter(device=device, state=CommandState.QUEUED).order_by(
        "created_at", "id"
    )


def machines_visible_to(user) -> QuerySet[Device]:
    """The machines ``user`` may see: a Driver (``roles.is_route_bound``) only those standing
    at a location on a route they drive; everyone else every machine (what else they may do
    with them is their permissions' business)."""
    if is_route_bound(user):
        return Device.objects.filter(location__routes__driver=user).distinct()
    return Device.objects.all()


def locations_visible_to(user) -> QuerySet[Location]:
    """The locations ``user`` may see: a Driver's are those on their routes."""
    if is_route_bound(user):
        return Location.objects.filter(routes__driver=user).distinct()
    return Location.objects.all()


def routes_visible_to(user) -> QuerySet[Route]:
    """The routes ``user`` may see: a Driver's own."""
    if is_route_bound(user):
        return Route.objects.filter(driver=user)
    return Route.objects.all()


def get_visible_device(raw_id: str, user) -> Device:
    """:func:`get_device`, refused as unknown (404) when ``user`` may not see the machine
    (a Driver, a machine on none of their routes): the same answer as a machine that does
    not exist, so a Driver learns nothing of the rest of the fleet."""
    device = get_device(raw_id)
    if is_route_bound(user) and not machines_visible_to(user).filter(pk=device.pk).exists():
        raise UnknownDevice(
            f"No device {device.device_id} is registered.", device_id=device.device_id
        )
    return device


def live_machine_scope(user) -> frozenset[str] | None:
    """The device ids a Driver's live socket is sent events of; None (every machine) for
    anyone else (``vending_site.live.audience``)."""
    if not is_route_bound(user):
        return None
    return frozenset(machines_visible_to(user).values_list("device_id", flat=True))


def location_choices() -> list[tuple[str, str]]:
    """Every location as ``(id, name)``, for the channels' location filter (notify.scopes)."""
    return [
        (str(pk), name) for pk, name in Location.objects.order_by("name").values_list("pk", "name")
    ]


def route_choices() -> list[tuple[str, str]]:
    """Every route as ``(id, name)``, for the channels' route filter (notify.scopes)."""
    return [
        (str(pk), name) for pk, name in Route.objects.order_by("name").values_list("pk", "name")
    ]
