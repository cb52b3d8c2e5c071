"""How long a request waited before this process began to answer it, and how long one that
arrives now would wait for the device thread of ``manage.py serve``.

A web server past its capacity queues requests, and a device poll answered after the
firmware's 3 s read timeout is work for nothing (PROTOCOL.md). ``devices.api.shed_poll``
answers such polls idle at once; this module only measures, for any caller:

- :func:`waited`: seconds since the request arrived, from two clocks, whichever says longer:
  nginx's ``X-Request-Start: t=<seconds since the epoch>`` (``$msec``, set on the device
  server block of ``deploy/nginx/vending.conf.template``: the time nginx read the request;
  granian's WSGI workers queue a request in Rust until a thread is free, and Python learns
  nothing of that wait otherwise), and ``environ[ARRIVED]``, the monotonic time the ASGI
  front handed the request to the device thread (:class:`HopQueue`). A request with neither
  has waited 0 as far as anyone knows. The header is believed from any sender: an old time
  can only get the sender an idle answer it could have had anyway, a future one is read as 0.
- :class:`HopQueue`: the requests handed to the device thread and not yet answered, and the
  thread's recent time per request; :meth:`HopQueue.expected_wait` is what one more would
  wait, known on the event loop before the hop is paid for.
"""

from __future__ import annotations

import time

HEADER = "HTTP_X_REQUEST_START"
ARRIVED = "vending.arrived"  # environ key: time.monotonic() when the hop was asked for
SMOOTHING = 0.1  # weight of the newest request in the thread's time per request


def header_age(value: str, now: float) -> float:
    """Seconds between ``value`` (``t=1765150000.123``, or the number alone; seconds since
    the epoch as nginx's ``$msec``; milliseconds or microseconds, as other proxies send it,
    are recognised by their size) and ``now`` (``time.time()``); 0 when unreadable or in
    the future."""
    raw = value.strip()
    if raw.startswith("t="):
        raw = raw[2:]
    try:
        stamp = float(raw)
    except ValueError:
        return 0.0
    if stamp != stamp or stamp <= 0:  # NaN, or nonsense
        return 0.0
    if stamp > 1e14:  # microseconds
        stamp /= 1e6
    elif stamp > 1e11:  # milliseconds
        stamp /= 1e3
    return max(now - stamp, 0.0)


def waited(environ: dict) -> float:
    """Seconds the request has waited since it arrived, as far as this process can tell."""
    age = 0.0
    arrived = environ.get(ARRIVED)
    if arrived is not None:
        age = time.monotonic() - arrived
    stamp = environ.get(HEADER)
    if stamp:
        age = max(age, header_age(stamp, time.time()))
    return age


class HopQueue:
    """The ASGI front's requests handed to the one device thread and not yet begun there.

    ``entered`` is counted on the event loop when a request is handed over, ``started`` by
    the thread when it begins one (asgiref shields the hop, so every request handed over
    does begin, even when its client has gone). Each has one writer, so no lock: the loop
    reads ``started`` as the thread last wrote it. Counting a request until the thread
    *begins* it, not until the loop takes its answer back, keeps a busy loop's backlog of
    answers out of the queue (a queue read too long sheds polls the thread had time for).
    ``per_request`` is the thread's smoothed time per request (one float, written by the
    thread). :meth:`expected_wait`: with one thread serving in order, what a request handed
    over now waits before it begins, give or take the one being served."""

    def __init__(self) -> None:
        self.entered = 0
        self.started = 0
        self.per_request = 0.0  # seconds, smoothed

    @property
    def waiting(self) -> int:
        return self.entered - self.started

    def expected_wait(self) -> float:
        return self.waiting * self.per_request

    def served(self, seconds: float) -> None:
        """The thread spent ``seconds`` on one request."""
        self.per_request += SMOOTHING * (seconds - self.per_request)
