"""Known, approved machines kept in each process, so an idle poll reads no database.

An idle poll of a known machine is one indexed read that says two things: what the machine
is (admission: approved, bound to which address, over which link) and whether a command
waits for it. This keeps that answer per process (:func:`remember`) and gives it back
(:func:`cached`) while it still holds. Every change that could make it wrong (a command
created, the machine's row saved or deleted, an approval, a revoke, a move accepted, a
disconnect) is announced after its transaction commits (:func:`notify`), to this process at
once and to every other through Redis pub/sub (``vending_site.backends.broadcast``), and
the machine is forgotten.

Why it cannot hand out a stale answer:

- A read is kept only under the :class:`Token` taken before it (:func:`begin`), and only
  if no announcement about that machine arrived since, nor was the subscription lost: an
  announcement published after a change commits can never be overtaken by a read that
  started before the commit. A read inside a transaction is never kept.
- Nothing is kept or used while the subscription is down; it is dropped when it goes down.
- An announcement lost with the subscription up (a process that dies between its commit and
  its publish) is covered by ``DEVICE_POLL_CACHE_SECONDS``: no answer is kept longer, so
  such a loss delays a command by that much at most. It never loses or doubles one.

Only "nothing waits for this approved, bound WiFi machine" is kept: a kept answer can only
make a poll answer idle. A poll that hands over a command always reads the database and
claims it there (``transactions.delivery``), and a refusal is always decided on a fresh
read. Without Redis the announcements go through a file that every process of the host
looks at before it answers from memory (``vending_site.backends.broadcast``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save

from vending_site.backends.broadcast import Topic

from .choices import Transport
from .models import Command, Device

MAX_ENTRIES = 100_000  # only approved machines are kept; this bounds a process anyway


@dataclass(frozen=True)
class Token:
    """Taken before a read: what the cache had heard by then."""

    epoch: int
    heard: int


@dataclass(frozen=True)
class Entry:
    device: Device
    epoch: int
    until: float  # time.monotonic()


_entries: dict[str, Entry] = {}
_last_heard: dict[str, int] = {}  # device id -> number of the last announcement naming it
_heard = 0  # announcements received by this process
_lock = threading.Lock()


def _forget(device_ids: list[str]) -> None:
    global _heard
    with _lock:
        _heard += 1
        for device_id in device_ids:
            _entries.pop(device_id, None)
            _last_heard[device_id] = _heard
        if len(_last_heard) > MAX_ENTRIES:
            _drop_all()


def _drop_all() -> None:
    """Forget everything (the caller holds the lock); tokens taken before stay refused."""
    global _heard
    _heard += 1
    _entries.clear()
    _last_heard.clear()
    _last_heard[""] = _heard  # marks the floor: see remember()


def _reset() -> None:
    with _lock:
        _drop_all()


topic = Topic("devices.poll", forget=_forget, reset=_reset)


def _fresh_process() -> None:
    """A forked child starts with nothing kept and a lock nobody holds."""
    global _lock
    _lock = threading.Lock()
    _drop_all()


os.register_at_fork(after_in_child=_fresh_process)


def begin() -> Token | None:
    """Take before reading a machine; None when nothing read now may be kept: the cache is
    off or deaf, or the read would be made inside a transaction (which may see an older
    snapshot than the announcements say, and whose own announcements wait for its commit)."""
    if settings.DEVICE_POLL_CACHE_SECONDS <= 0 or connection.in_atomic_block or not topic.listening:
        return None
    return Token(topic.epoch, _heard)


def cached(device_id: str) -> Device | None:
    """The kept machine (``device_id`` canonical), with nothing pending, if its answer still
    holds; else None."""
    entry = _entries.get(device_id)
    if entry is None:
        return None
    if entry.until < time.monotonic() or entry.epoch != topic.epoch or not topic.listening:
        _entries.pop(device_id, None)
        return None
    if topic.catch_up() or device_id not in _entries:
        return None  # an announcement is (or was just) on its way in: read this time
    return entry.device


def remember(device: Device, token: Token | None) -> None:
    """Keep ``device`` (just read, ``has_pending`` annotated, after ``token`` was taken)
    when nothing is pending for it, it is an approved, bound WiFi machine, and nothing was
    announced about it since the token."""
    if token is None:
        return
    if (
        device.has_pending
        or device.transport != Transport.WIFI
        or not device.approved
        or not device.bound_address
    ):
        _entries.pop(device.device_id, None)
        return
    # Spread over the last quarter of the limit: machines kept together (every machine after
    # a restart) are not all read again in the same second.
    until = time.monotonic() + settings.DEVICE_POLL_CACHE_SECONDS * random.uniform(0.75, 1.0)
    if topic.catch_up():
        return  # announcements on their way in may be about it
    with _lock:
        if token.epoch != topic.epoch or not topic.listening:
            return
        if max(_last_heard.get(device.device_id, 0), _last_heard.get("", 0)) > token.heard:
            return  # announced while it was being read: the read may predate the change
        if len(_entries) >= MAX_ENTRIES:
            _drop_all()
            return
        _entries[device.device_id] = Entry(device, token.epoch, until)


def notify(device_ids: Iterable[str]) -> None:
    """Once the current transaction commits (at once outside one): what every process
    keeps about ``device_ids`` no longer holds."""
    ids = [device_id for device_id in device_ids if device_id]
    if ids:
        transaction.on_commit(lambda: topic.publish(ids))


def forget_all() -> None:
    """Drop every kept answer of this process (tests)."""
    _reset()


def _device_changed(sender, instance: Device, **kwargs) -> None:
    notify([instance.device_id])


def _command_created(sender, instance: Command, created: bool, **kwargs) -> None:
    if created:
        notify([instance.device.device_id])


post_save.connect(_device_changed, sender=Device, dispatch_uid="devices.poll_cache.saved")
post_delete.connect(_device_changed, sender=Device, dispatch_uid="devices.poll_cache.deleted")
post_save.connect(_command_created, sender=Command, dispatch_uid="devices.poll_cache.command")
