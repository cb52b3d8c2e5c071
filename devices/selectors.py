"""Reads of devices and commands."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone

from vending_site.statements import Select

from .choices import CommandState
from .exceptions import BadDeviceId, NoActiveDevice, UnknownDevice
from .models import Command, Device
from .protocol import InvalidDeviceId, normalize_device_id

# A device by its canonical id: every vend (get_device) and every confirmation reads it,
# so its SELECT is compiled once (vending_site.statements). device_id is unique.
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


_PLACEHOLDER_ID = "\x00device-id\x00"  # no canonical id can contain NUL


@dataclass(frozen=True)
class _PollStatement:
    """The compiled SQL of :func:`_device_for_poll_queryset` and how to read its row."""

    sql: str
    params: tuple
    id_position: int  # where the device id goes in ``params``
    field_names: tuple[str, ...]  # the model's columns, in the row's order
    pending_index: int  # the column of ``has_pending``
    converters: tuple  # (column index, converters, expression), as the ORM applies them


_poll_statements: dict[tuple[str, str], _PollStatement] = {}


def _poll_statement(alias: str) -> _PollStatement:
    """:func:`_device_for_poll_queryset` compiled once per database.

    Building and compiling that queryset, then building the model from the row through
    the queryset machinery, was most of an idle poll's time (the query itself runs in tens
    of microseconds; see bench/poll_profile.py). The SQL, the column order and the value
    converters are the ORM's own, taken from its compiler, so they stay right when the
    model changes; only the device id varies.
    """
    key = (alias, connections[alias].vendor)
    if key not in _poll_statements:
        compiler = _device_for_poll_queryset(_PLACEHOLDER_ID).query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        (position,) = [i for i, value in enumerate(params) if value == _PLACEHOLDER_ID]
        fields = compiler.klass_info["select_fields"]
        assert fields == list(range(len(fields))), "model columns come first"
        expressions = [column for column, _sql, _alias in compiler.select]
        converters = compiler.get_converters(expressions)
        _poll_statements[key] = _PollStatement(
            sql=sql,
            params=tuple(params),
            id_position=position,
            field_names=tuple(expressions[i].target.attname for i in fields),
            pending_index=compiler.annotation_col_map["has_pending"],
            converters=tuple((i, funcs, expr) for i, (funcs, expr) in converters.items()),
        )
    return _poll_statements[key]


def device_for_poll(device_id: str) -> Device | None:
    """The polling device with ``has_pending`` annotated, in one indexed query."""
    alias = "default"
    statement = _poll_statement(alias)
    params = list(statement.params)
    params[statement.id_position] = device_id
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, funcs, expression in statement.converters:
        for convert in funcs:
            values[index] = convert(values[index], expression, connection)
    device = Device.from_db(alias, statement.field_names, values[: len(statement.field_names)])
    device.has_pending = bool(values[statement.pending_index])
    return device


def pending_commands(device: Device) -> QuerySet[Command]:
    return Command.objects.filter(device=device, state=CommandState.QUEUED).order_by(
        "created_at", "id"
    )
