"""Known, approved machines kept in each process, so an idle poll reads no database.

An idle poll of a known machine is one indexed read that says two things: what the machine
is (admission: approved, bound to which address, over which link) and whether a command
waits for it. This keeps that answer per process (:func:`remember`) and gives it back
(:func:`cached`) only while it provably still holds, by a *notice* counter per machine in
the shared cache (Redis when ``REDIS_URL`` is set): every change that could make the answer
wrong (a command created, the machine's row saved or deleted, an approval, a revoke, a
move accepted, a disconnect) increments it after its transaction commits (:func:`notify`).
The poll reads the counter in the round trip its throttles already make
(``vending_site.http.throttling.allow_requests_reading``) and uses a kept answer only when
the counter is the one read *before* that answer's database read, and for at most
``DEVICE_POLL_CACHE_SECONDS`` (the reconciliation: a notification that is lost, when a
process dies between its commit and the increment or the cache is unreachable then, delays
a command by that much at most, it never loses or doubles one).

Only "nothing waits for this approved, bound WiFi machine" is kept: a kept answer can only
make a poll answer idle. A poll that hands over a command always reads the database and
claims it there (``transactions.delivery``), and a refusal is always decided on a fresh
read. When the cache cannot be read, every poll reads the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from .choices import Transport
from .models import Command, Device

NOTICE_PREFIX = "devpoll.notice."
MAX_ENTRIES = 100_000  # only approved machines are kept; this bounds a process anyway


@dataclass(frozen=True)
class Entry:
    device: Device
    notice: int
    until: float  # time.monotonic()


_entries: dict[str, Entry] = {}
_lock = threading.Lock()


def notice_key(device_id: str) -> str:
    """The cache key of ``device_id``'s notice counter (ids are canonical: [A-Z0-9_])."""
    return NOTICE_PREFIX + device_id


def cached(device_id: str, notice: int | None) -> Device | None:
    """The kept machine, with nothing pending, if its answer still holds under ``notice``
    (the counter read for this poll before any database read); else None."""
    if notice is None or settings.DEVICE_POLL_CACHE_SECONDS <= 0:
        return None
    entry = _entries.get(device_id)
    if entry is None or entry.notice != notice or entry.until < time.monotonic():
        return None
    return entry.device


def remember(device: Device, notice: int | None) -> None:
    """Keep ``device`` (just read, ``has_pending`` annotated) under ``notice``, read before
    that read, when nothing is pending for it and it is an approved, bound WiFi machine."""
    if notice is None or settings.DEVICE_POLL_CACHE_SECONDS <= 0:
        return
    if (
        device.has_pending
        or device.transport != Transport.WIFI
        or not device.approved
        or not device.bound_address
    ):
        _entries.pop(device.device_id, None)
        return
    until = time.monotonic() + settings.DEVICE_POLL_CACHE_SECONDS
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[device.device_id] = Entry(device, notice, until)


def notify(device_ids: Iterable[str]) -> None:
    """Once the current transaction commits (at once outside one): what every process
    keeps about ``device_ids`` no longer holds."""
    ids = [device_id for device_id in device_ids if device_id]
    if ids:
        transaction.on_commit(lambda: _bump(ids))


def _bump(device_ids: list[str]) -> None:
    for device_id in device_ids:
        _entries.pop(device_id, None)  # this process at once
        key = notice_key(device_id)
        try:
            cache.add(key, 0, timeout=None)
            cache.incr(key)
        except ValueError:
            pass  # unreachable (or evicted meanwhile): polls read the database or wait the TTL


def forget_all() -> None:
    """Drop every kept answer of this process (tests)."""
    _entries.clear()


def _device_changed(sender, instance: Device, **kwargs) -> None:
    notify([instance.device_id])


def _command_created(sender, instance: Command, created: bool, **kwargs) -> None:
    if created:
        notify([instance.device.device_id])


post_save.connect(_device_changed, sender=Device, dispatch_uid="devices.poll_cache.saved")
post_delete.connect(_device_changed, sender=Device, dispatch_uid="devices.poll_cache.deleted")
post_save.connect(_command_created, sender=Command, dispatch_uid="devices.poll_cache.command")
