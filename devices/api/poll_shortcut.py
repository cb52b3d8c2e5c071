"""The v2.1 poll (``GET /esp32/commands/<id>``) answered in front of Django's handler.

Every machine asks this every 2 s and nearly every answer is ``null``; through the handler,
the device middleware and DRF an idle poll cost about 1 ms of a worker's CPU, most of it
machinery around the two round trips that decide it (the throttles' Redis script, the
device's indexed read). The WSGI application (``vending_site.wsgi``) offers each request to
:func:`answer` first; it answers only a poll it can answer exactly as :class:`PollView`
would, with 200, and returns None for everything else, which then goes through the whole
stack as before. The rules are not repeated here: the same services decide
(``transactions.delivery.poll``: admission, registration, presence, the claim), the same
throttle classes count, the same browser and network checks refuse.

A request is left to the whole stack, before anything is counted or written, when it is
not a bodiless GET of that path; when it looks like a browser's, comes from outside
``DEVICE_ALLOWED_NETWORKS``, or ``DEVICE_TOKEN_REQUIRED`` is on; or when
``SecurityMiddleware`` would redirect it. After counting, it is left to the stack when a
throttle refuses it or the poll service raises (a refusal, a bad id, the database gone):
the counts are taken back first, so the stack counts the request once, and nothing the
service did is kept (a refusal writes nothing but the candidate address, which the stack's
attempt finds already noted; a claim that fails rolls back). The stack then answers with
its 4xx/503, its body and its log row. A command the service claimed is always answered
here: never handed to the stack, which would claim the next one.

What the stack's device middleware does for a poll it answers is done here too: the
request id (``X-Request-ID``, bound to the log context), ``SecurityMiddleware``'s headers,
django-prometheus' ``django_http_*`` series (``ViewRequestMetrics``), and Django's
``request_started``/``request_finished`` signals (which recycle database connections and
clear the log context). Off with ``DEVICE_POLL_SHORTCUT=false``.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

from django.conf import settings
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware

from devices.access import browser_request_reason, device_network_allowed
from devices.choices import Protocol
from devices.protocol import normalize_device_id
from transactions.delivery import poll
from vending_site.http.deferred_throttle import windows
from vending_site.http.middleware import HEADER as REQUEST_ID_HEADER
from vending_site.http.middleware import request_id_for
from vending_site.http.network import client_ip
from vending_site.http.throttling import allow_requests
from vending_site.observability import logging as vlog
from vending_site.observability import metrics

from .device_views import PollView
from .throttles import DeviceAddressThrottle, DeviceThrottle

PATH = re.compile(r"/esp32/commands/([^/]+)")
VIEW_NAME = "esp32-poll"  # the route's name in devices.api.urls (django_http_* label it so)
ALLOW = ", ".join(method.upper() for method in PollView.http_method_names)

log = vlog.get_logger("devices.api.device_views")  # the view's own logger: same log lines
_security = SecurityMiddleware(lambda request: None)
_request_metrics: metrics.ViewRequestMetrics | None = None


def _metrics() -> metrics.ViewRequestMetrics:
    global _request_metrics
    if _request_metrics is None:
        _request_metrics = metrics.ViewRequestMetrics(view=VIEW_NAME)
    return _request_metrics


def _has_body(environ: dict) -> bool:
    return environ.get("CONTENT_LENGTH", "") not in ("", "0") or bool(
        environ.get("HTTP_TRANSFER_ENCODING")
    )


def answer(environ: dict) -> HttpResponse | None:
    """The poll's response, or None: the whole stack answers this request."""
    if environ.get("REQUEST_METHOD") != "GET" or not settings.DEVICE_POLL_SHORTCUT:
        return None
    match = PATH.fullmatch(environ.get("PATH_INFO", ""))
    if match is None or settings.DEVICE_TOKEN_REQUIRED or _has_body(environ):
        return None
    started = time.perf_counter()
    raw_id = match.group(1)
    try:
        normalize_device_id(raw_id)  # a bad id is the stack's 400
        request = WSGIRequest(environ)
        address = client_ip(request)
        if (
            browser_request_reason(request) is not None
            or not device_network_allowed(address)
            or _security.process_request(request) is not None
        ):
            return None
    except Exception:  # noqa: BLE001 - a bad id (400), an odd request: the stack's to answer
        return None
    signals.request_started.send(sender=WSGIHandler, environ=environ)
    request_id = request_id_for(request)
    vlog.clear()
    vlog.bind(request_id=request_id, device_id=raw_id[:64])
    view = SimpleNamespace(kwargs={"device_id": raw_id})
    throttles = [DeviceAddressThrottle(), DeviceThrottle()]
    if allow_requests(throttles, request, view):
        _take_back(throttles)  # the stack counts it again and answers 429
        return None
    try:
        device, command = poll(
            raw_id=raw_id,
            protocol=Protocol.WIFI_V2,
            remote_addr=address,
            kinds=PollView.kinds,
            endpoint=request.path,
        )
    except Exception:  # noqa: BLE001 - the stack answers it, with its own error mapping
        _take_back(throttles)
        return None
    # From here on the answer is this one: a claimed command must reach the machine.
    if device.approved and device.bound_address:  # one a worker may keep (devices.poll_cache)
        for throttle in throttles:
            if throttle.counted and throttle.counts:  # where its polls from memory count on
                hits, before = throttle.counts
                windows.learn(
                    throttle.key,
                    window=throttle._window,
                    period=throttle.duration,
                    total=hits,
                    before=before,
                )
    metrics.record_poll(dialect=Protocol.WIFI_V2)
    log.debug("device_poll", delivered=command.pk if command else None)
    response = PollView.answer(command)
    response["Allow"] = ALLOW
    _security.process_response(request, response)
    response[REQUEST_ID_HEADER] = request_id
    response._handler_class = WSGIHandler  # close() sends request_finished, as Django's
    _metrics().record(
        secure=request.is_secure(),
        status=response.status_code,
        charset=response.charset,
        request_bytes=0,
        response_bytes=len(response.content),
        seconds=time.perf_counter() - started,
        ajax=environ.get("HTTP_X_REQUESTED_WITH") == "XMLHttpRequest",
    )
    return response


def _take_back(throttles: list) -> None:
    for throttle in throttles:
        throttle.take_back()
