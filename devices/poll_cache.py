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
  its publish) is caught by the reconciliation below, or else by the time limit: no answer
  holds longer than ``DEVICE_POLL_CACHE_SECONDS`` after the start of the last read that
  found it so. Such a loss delays a command, never loses or doubles one.

Reconciliation (:func:`reconcile`): every ``DEVICE_POLL_RECONCILE_SECONDS`` (at most half of
``DEVICE_POLL_CACHE_SECONDS``) a daemon thread of each process (:data:`reconciler`, started
by the first answer kept, again after a fork or if it died) reads in a few queries what the
kept answers rest on: which machines have a command queued, and each kept machine's
``STATE_FIELDS`` (a range of the unique index per ``CHUNK`` machines). A kept answer the
database no longer agrees with is dropped (and treated as announced); one it agrees with
counts as read when the reconciliation began, so while reconciliation runs a kept machine
is never read again at its poll, and a lost announcement delays a command by one period
and a reconciliation at most. The reconciliation adds nothing and moves an answer only
forward in time, only the very answer it compared, and only under a :class:`Token` taken
before its reads: racing an announcement or a poll's read, it leaves the machine forgotten
or the newer read's answer in place. When it cannot run (the database down, the thread
gone, the setting at 0), nothing moves answers on and they lapse one by one, as without it.
10,000 kept machines cost one reconciliation of 11 queries, ~25 ms on PostgreSQL and ~50 ms
on SQLite (``bench/poll_reconcile.py``), instead of ~2,300 reads a second.

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
from vending_site.observability.ticker import Ticker

from .choices import Transport
from .models import Command, Device
from .selectors import machines_with_pending_commands, poll_states

MAX_ENTRIES = 100_000  # only approved machines are kept; this bounds a process anyway
CHUNK = 1000  # kept machines whose rows one query of a reconciliation reads (a range of ids)
# What a kept answer rests on, so what a reconciliation compares (with "nothing queued"):
# the row (a machine deleted and registered again is another), the link, the approval, the
# binding, a disconnection. Every other column the idle poll does not read from the kept row
# (last_seen it refreshes itself). A rule of the idle poll that reads another column of the
# kept row adds it here.
STATE_FIELDS = ("id", "transport", "approved", "bound_address", "disconnected_at")

_clock = time.monotonic  # tests move it


@dataclass(frozen=True)
class Token:
    """Taken before a read: what the cache had heard by then, and when."""

    epoch: int
    heard: int
    taken: float  # _clock()


@dataclass(slots=True)
class Entry:
    device: Device
    epoch: int
    state: tuple  # the row's STATE_FIELDS as read: what a reconciliation compares
    checked: float  # _clock() when the last read that found it so began; moved on under _lock
    life: float  # seconds it holds past `checked` (DEVICE_POLL_CACHE_SECONDS, jittered)


_entries: dict[str, Entry] = {}
_last_heard: dict[str, int] = {}  # device id -> number of the last announcement naming it
_heard = 0  # announcements received by this process
_lock = threading.Lock()


def _forget(device_ids: list[str]) -> None:
    with _lock:
        _forget_locked(device_ids)


def _forget_locked(device_ids: Iterable[str]) -> None:
    """Drop ``device_ids`` and refuse the reads of them begun before (the caller holds the lock)."""
    global _heard
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
    return Token(topic.epoch, _heard, _clock())


def cached(device_id: str) -> Device | None:
    """The kept machine (``device_id`` canonical), with nothing pending, if its answer still
    holds; else None."""
    entry = _entries.get(device_id)
    if entry is None:
        return None
    if entry.checked + entry.life < _clock() or entry.epoch != topic.epoch or not topic.listening:
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
    # a restart, or when reconciliation stops) are not all read again in the same second.
    life = settings.DEVICE_POLL_CACHE_SECONDS * random.uniform(0.75, 1.0)
    state = tuple(getattr(device, name) for name in STATE_FIELDS)
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
        _entries[device.device_id] = Entry(device, token.epoch, state, token.taken, life)
    period = reconcile_seconds()
    if period:
        reconciler.seconds = period
        reconciler.ensure()


def notify(device_ids: Iterable[str]) -> None:
    """Once the current transaction commits (at once outside one): what every process
    keeps about ``device_ids`` no longer holds."""
    ids = [device_id for device_id in device_ids if device_id]
    if ids:
        transaction.on_commit(lambda: topic.publish(ids))


def reconcile_seconds() -> float:
    """The reconciler's period: ``DEVICE_POLL_RECONCILE_SECONDS``, at most half of
    ``DEVICE_POLL_CACHE_SECONDS`` (so an entry, which holds three quarters of that at
    least, is checked again before it lapses); 0 when either is off."""
    period, limit = settings.DEVICE_POLL_RECONCILE_SECONDS, settings.DEVICE_POLL_CACHE_SECONDS
    if period <= 0 or limit <= 0:
        return 0.0
    return min(period, limit / 2)


def reconcile() -> int:
    """Check every machine this process keeps against the database now; returns how many
    were dropped.

    Under one :class:`Token` taken first, it reads which machines have a command queued
    (``selectors.machines_with_pending_commands``), then the kept machines' ``STATE_FIELDS``,
    ``CHUNK`` machines a query (``selectors.poll_states``: a range of the unique index). A
    machine with a command queued, whose row is gone or differs from the kept one, is
    dropped, and a read of it begun before is not kept (as after an announcement). One that
    matches was so at a moment after the token: it holds until ``DEVICE_POLL_CACHE_SECONDS``
    after the token, as if read then. Only an entry still the one compared is moved on, and
    never back; nothing is added. Inside a transaction, or while the announcements are not
    heard, it does nothing.
    """
    token = begin()
    if token is None:
        return 0
    with _lock:
        device_ids = list(_entries)
    if not device_ids:
        return 0
    device_ids.sort()  # chunks are ranges of the index
    pending = machines_with_pending_commands()
    dropped = 0
    for start in range(0, len(device_ids), CHUNK):
        chunk = device_ids[start : start + CHUNK]
        compared = {
            device_id: entry
            for device_id in chunk
            if (entry := _entries.get(device_id)) is not None
        }
        if not compared:
            continue
        rows = poll_states(chunk[0], chunk[-1], STATE_FIELDS)
        topic.catch_up()  # take in what was announced meanwhile first (the file's: only now)
        with _lock:
            if token.epoch != topic.epoch:
                break  # everything kept then was dropped with the subscription
            stale = []
            for device_id, entry in compared.items():
                if _entries.get(device_id) is not entry:
                    continue  # forgotten or kept again since: not what was compared
                if device_id in pending or rows.get(device_id) != entry.state:
                    stale.append(device_id)
                elif entry.checked < token.taken:
                    entry.checked = token.taken
            if stale:
                _forget_locked(stale)
                dropped += len(stale)
    return dropped


def _close_connection() -> None:
    connection.close()  # the calling thread's own (Django's connections are per thread)


def _reconcile_in_thread() -> None:
    if not reconcile_seconds():
        return
    try:
        reconcile()
    except Exception:
        _close_connection()  # made again at the next try (the database may be back)
        raise


# Each process's own daemon thread (started by the first entry kept, again after a fork or
# if it died): a failing reconciliation is logged once per outage, and entries then lapse.
reconciler = Ticker(
    "poll-cache-reconciler",
    1.0,
    _reconcile_in_thread,
    last_tick=False,
    cleanup=_close_connection,
)


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
