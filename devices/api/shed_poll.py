"""Overload: the device poll the firmware will not wait for, answered idle at once.

The firmware polls every 2 s and gives up on an answer after 3 s (PROTOCOL.md). Past the
server's capacity requests queue, each waits longer, and once they wait past 3 s every
answer is work for nothing while the machines poll again: before this module the answered
polls of the production tier fell from ~700/s to under 100/s within 15 s past the knee
(issue 18). So a poll that has waited too long is not examined at all: it gets the idle
answer the firmware already understands (v2.1 ``null``, the documented variant's
``NO_COMMAND``, with exactly the headers of a real idle answer), which is always safe: a
queued command stays queued and goes out at the machine's next poll, and the thread goes
to polls that can still be answered in time.

**Which polls, when** (``DEVICE_POLL_SHED_AFTER``, default 1 s; 0: never):

- *late* (:func:`answer`, the WSGI shortcut after the kept poll's, so in the thread that
  would run the poll): the poll has waited longer than that since it arrived
  (``vending_site.http.queue_wait.waited``: nginx's ``X-Request-Start``, set on the device
  server block, for granian's WSGI workers, whose queue Python cannot see; under
  ``manage.py serve`` also the time it was handed to the device thread). 1 s of the
  firmware's 3 leaves 2 s for the poll's own work, which takes milliseconds when the
  server keeps up, so nothing is shed short of an overload.
- *queue* (:func:`answer_scope`, an ASGI shortcut after the kept poll's, on the event loop
  of ``manage.py serve``): the requests already waiting for the one device thread would
  keep this one waiting longer than half that (``HopQueue.expected_wait``, an estimate:
  the margin keeps polls from being admitted only to be shed late): shed before the
  thread hop is even paid for.

A kept machine's idle poll (``devices.api.kept_poll``) is answered before either: it is
answered from memory as cheaply as a shed one, and truly. Without nginx in front of granian
no arrival time is known and WSGI polls are never shed late (granian's ``--backpressure``
would not help: it bounds the connections a worker accepts, not the requests queued on
them, and the device fleet keeps its connections open).

**Never shed**: anything but a bodiless GET of a poll path (confirmations, registrations,
everything that writes), a poll that looks like a browser's or comes from outside
``DEVICE_ALLOWED_NETWORKS`` (the full path refuses those; a refusal stays a refusal), a
documented poll without a ``Device-ID``.

**What a shed poll does not do**: no throttle counts, no ``last_seen`` refresh, no log row,
no ``vending_device_polls_total``: it is not examined. Counted in
``vending_polls_shed_total{dialect,reason}`` and django-prometheus' ``django_http_*`` series
as the answered request it is; staff see shedding as the *Polls shed* alert
(``vending_site.alerts.builtin``) and on ``/metrics``.
"""

from __future__ import annotations

import re
import time

from django.conf import settings
from django.core.signals import setting_changed

from devices.access import ENVIRON_HEADERS, browser_headers_reason, device_network_allowed
from devices.choices import Protocol
from vending_site.http.asgi_devices import device_queue, environ_for
from vending_site.http.network import client_ip_of
from vending_site.http.queue_wait import waited
from vending_site.observability import metrics

from . import idle_answer
from .device_views import DocumentedPollView, PollView

# A poll is shed on the loop when the queue ahead is longer than this share of the budget:
# the estimate is rough (the thread's recent time per request), and one admitted only to
# be shed late in the thread costs the hop for nothing.
QUEUE_SHARE = 0.5
V2_PATH = re.compile(r"/esp32/commands/[^/]+")
DOCUMENTED_PATH = "/esp32/wifi/command"
# dialect -> (view, the route's name in devices.api.urls, for the django_http_* labels)
VIEWS = {
    Protocol.WIFI_V2: (PollView, "esp32-poll"),
    Protocol.WIFI_DOCUMENTED: (DocumentedPollView, "esp32-wifi-poll"),
}

_answers: dict[tuple[str, bool], tuple[list[tuple[str, str]], bytes]] = {}
_request_metrics = {
    dialect: metrics.ViewRequestMetrics(view=name) for dialect, (_view, name) in VIEWS.items()
}
_shed = {
    (dialect, reason): metrics.shed_counter(dialect=dialect, reason=reason)
    for dialect in VIEWS
    for reason in metrics.SHED_REASONS
}


def answer(environ: dict) -> idle_answer.Answer | None:
    """The WSGI idle answer ``(status, headers, body)`` of a poll that has waited longer
    than ``DEVICE_POLL_SHED_AFTER``, or None (the request goes on as usual)."""
    budget = settings.DEVICE_POLL_SHED_AFTER
    if not budget:
        return None
    if waited(environ) <= budget:  # the common case first: it costs a look-up or two
        return None
    dialect = _poll_dialect(environ)
    if dialect is None:
        return None
    return _shed_answer(environ, dialect, "late")


async def answer_scope(scope: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """The ASGI idle answer of a poll that waited, or would wait for the device thread,
    longer than ``DEVICE_POLL_SHED_AFTER`` (``asgi_shortcuts``: on the event loop)."""
    budget = settings.DEVICE_POLL_SHED_AFTER
    if not budget:
        return None
    if device_queue.expected_wait() > budget * QUEUE_SHARE:
        reason = "queue"
    elif any(name == b"x-request-start" for name, _value in scope.get("headers", ())):
        reason = "late"  # by nginx's time, before it reached this process, if at all
    else:
        return None  # the common case, decided without building the environ
    environ = environ_for(scope, b"")
    dialect = _poll_dialect(environ)
    if dialect is None or (reason == "late" and waited(environ) <= budget):
        return None
    return idle_answer.for_asgi(_shed_answer(environ, dialect, reason))


def _poll_dialect(environ: dict) -> str | None:
    """The dialect of a poll that may be shed, or None (anything else)."""
    if environ.get("REQUEST_METHOD") != "GET":
        return None
    if environ.get("CONTENT_LENGTH", "") not in ("", "0") or environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    path = environ.get("PATH_INFO", "")
    if V2_PATH.fullmatch(path):
        dialect = Protocol.WIFI_V2
    elif path == DOCUMENTED_PATH and environ.get("HTTP_DEVICE_ID", "").strip():
        dialect = Protocol.WIFI_DOCUMENTED
    else:
        return None
    if browser_headers_reason(lambda name: environ.get(ENVIRON_HEADERS[name])) is not None:
        return None
    if not device_network_allowed(client_ip_of(environ)):
        return None
    return dialect


def _shed_answer(environ: dict, dialect: str, reason: str) -> idle_answer.Answer:
    started = time.perf_counter()
    secure = idle_answer.is_secure(environ, settings.SECURE_PROXY_SSL_HEADER)
    headers, body = _answers.get((dialect, secure)) or _idle_answer(dialect, secure)
    return idle_answer.give(
        environ,
        headers=headers,
        body=body,
        secure=secure,
        started=started,
        request_metrics=_request_metrics[dialect],
        counter=_shed[(dialect, reason)],
    )


def _idle_answer(dialect: str, secure: bool) -> tuple[list[tuple[str, str]], bytes]:
    """The view's idle answer (but the request id), made once per dialect and scheme."""
    made = _answers[(dialect, secure)] = idle_answer.view_answer(VIEWS[dialect][0], secure)
    return made


def _settings_changed(*, setting: str, **kwargs) -> None:
    _answers.clear()


setting_changed.connect(_settings_changed, dispatch_uid="devices.api.shed_poll")
