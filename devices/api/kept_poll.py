"""The idle v2.1 poll of a machine this process keeps, answered from memory.

Nearly every poll a fleet sends asks about an approved machine with nothing queued, and
``devices.poll_cache`` keeps exactly that answer per process until something about the
machine changes. Such a poll needs no database, no Redis round trip and none of Django's
request machinery: :func:`answer` gives the WSGI answer (status line, headers, body) of
``null`` straight from the environ, or None, and the request then goes to the poll's
shortcut and the whole stack as before (``devices.api.poll_shortcut``, ``vending_site.wsgi``).

It answers only when every rule of the full path would let the poll through with nothing to
write, each decided by the same function:

- the request: a bodiless GET of the canonical id's path; not a browser's
  (``devices.access.browser_headers_reason``); from inside ``DEVICE_ALLOWED_NETWORKS``;
  no token required; no HTTPS redirect configured; idle polls not logged;
- the machine: kept (``poll_cache.cached``: approved, bound, WiFi, nothing pending, nothing
  announced since), online, and the sender allowed to act for it
  (``devices.access.wifi_request_allowed``: its bound address);
- the limits: both device throttles' counts, kept per process and added to the shared
  counters four times a second (``vending_site.http.deferred_throttle``); a poll over a
  limit as far as this process knows goes to the throttles, which decide on the shared
  count and answer 429.

What the full path does for an idle poll is done here too: the poll metric and
django-prometheus' ``django_http_*`` series, the ``last_seen`` refresh (``mark_seen``:
noted in memory for the process's writer), ``SecurityMiddleware``'s headers and the
``X-Request-ID``. Not done: Django's ``request_started``/``request_finished`` signals,
which recycle database connections (none is used here), and the log context (the
``device_poll`` debug line carries the request id and device id itself).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace

from django.conf import settings
from django.core.signals import setting_changed
from django.utils import timezone

from devices import poll_cache
from devices.access import (
    ENVIRON_HEADERS,
    browser_headers_reason,
    device_network_allowed,
    wifi_request_allowed,
)
from devices.choices import Protocol
from devices.services import mark_seen
from vending_site.http.asgi_devices import environ_for
from vending_site.http.deferred_throttle import windows
from vending_site.http.network import client_ip_of
from vending_site.observability import logging as vlog
from vending_site.observability import metrics

from . import idle_answer
from .device_views import PollView
from .throttles import DeviceAddressThrottle, DeviceThrottle

PREFIX = "/esp32/commands/"
MAX_KEYS = 100_000  # (machine, address) pairs whose throttle keys are remembered
BODY = b"null"

log = vlog.get_logger("devices.api.device_views")  # the view's own logger: same log lines
_headers: dict[bool, list[tuple[str, str]]] = {}  # secure? -> the answer's fixed headers
_keys: dict[tuple[str, str], tuple[str, str]] = {}  # (device id, address) -> throttle keys
_admitted: dict[str, tuple[object, str]] = {}  # device id -> (kept row, address it allowed)
_request_metrics = metrics.ViewRequestMetrics(view="esp32-poll")  # the route's name
_polls = metrics.poll_counter(dialect=Protocol.WIFI_V2)


def answer(
    environ: dict, *, on_loop: bool = False
) -> tuple[str, list[tuple[str, str]], bytes] | None:
    """``(status, headers, body)`` of an idle poll answered from memory, or None.

    ``on_loop``: called on an event loop (:func:`answer_scope`), where nothing may block:
    a machine whose poll would write (it comes back online, or ``last_seen`` is written by
    the request) is left to the full path, and a poll over a limit is handed on without
    adding this process's counts first (the full path's own try does that, in its thread).
    """
    started = time.perf_counter()
    if environ.get("REQUEST_METHOD") != "GET":
        return None
    path = environ.get("PATH_INFO", "")
    if not path.startswith(PREFIX):
        return None
    device = poll_cache.cached(path[len(PREFIX) :])  # a hit only for the canonical spelling
    if device is None:
        return None
    config = _config or _read_config()
    address = client_ip_of(environ)
    if not config.serves or not _request_qualifies(environ, address, config):
        return None
    if on_loop and not (config.seen_in_memory and _online_with_margin(device)):
        return None
    if not _admits(device, address):
        return None  # refused: the full path answers, and notes the address for staff
    keys = _keys.get((device.device_id, address))
    if keys is None:
        if len(_keys) >= MAX_KEYS:  # many addresses for kept machines (binding off): start over
            _keys.clear()
        keys = _keys[(device.device_id, address)] = _throttle_keys(environ, device.device_id)
    limits = [(keys[0], config.address_rate), (keys[1], config.device_rate)]
    if not windows.allow(limits, flush=not on_loop):
        return None  # the throttles decide, on the shared count
    mark_seen(device)  # an online machine's refresh is noted for the writer
    secure = idle_answer.is_secure(environ, config.proxy_ssl_header)
    headers = _headers.get(secure) or _fixed_headers(secure)
    answered = idle_answer.give(
        environ,
        headers=headers,
        body=BODY,
        secure=secure,
        started=started,
        request_metrics=_request_metrics,
        counter=_polls,
    )
    if config.debug_log:
        request_id = answered[1][-1][1]
        log.debug("device_poll", delivered=None, request_id=request_id, device_id=device.device_id)
    return answered


async def answer_scope(scope: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """:func:`answer` under the ASGI server, on its event loop (``asgi_shortcuts``)."""
    answered = answer(environ_for(scope, b""), on_loop=True)
    return None if answered is None else idle_answer.for_asgi(answered)


def _online_with_margin(device) -> bool:
    """Online, and still so a second from now: ``mark_seen``, which looks again, will note
    the refresh for the writer rather than write it (no database call on the loop)."""
    if not device.is_online:
        return False
    cutoff = timezone.now() - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER - 1)
    return device.last_seen >= cutoff


@dataclass(frozen=True)
class Config:
    """The settings an answer depends on, read once (again after a change: tests)."""

    serves: bool  # none of the settings that leave every poll to the full path is on
    allowed_networks: tuple[str, ...]
    address_rate: tuple[int, int] | None
    device_rate: tuple[int, int] | None
    proxy_ssl_header: tuple[str, str] | None
    debug_log: bool
    seen_in_memory: bool  # an online machine's refresh is noted for the writer, not written


_config: Config | None = None


def _read_config() -> Config:
    global _config
    _config = Config(
        serves=settings.DEVICE_POLL_SHORTCUT
        and not settings.DEVICE_TOKEN_REQUIRED
        and not settings.SECURE_SSL_REDIRECT
        and not settings.LOG_IDLE_POLLS,
        allowed_networks=tuple(settings.DEVICE_ALLOWED_NETWORKS),
        address_rate=windows.rate(settings.DEVICE_ADDRESS_THROTTLE),
        device_rate=windows.rate(settings.DEVICE_THROTTLE),
        proxy_ssl_header=settings.SECURE_PROXY_SSL_HEADER or None,
        debug_log=log.isEnabledFor(logging.DEBUG),
        seen_in_memory=settings.DEVICE_SEEN_FLUSH_SECONDS > 0,
    )
    return _config


def _request_qualifies(environ: dict, address: str, config: Config) -> bool:
    """The request is one the full path would serve without a refusal or a write."""
    if environ.get("CONTENT_LENGTH", "") not in ("", "0") or environ.get("HTTP_TRANSFER_ENCODING"):
        return False
    if browser_headers_reason(lambda name: environ.get(ENVIRON_HEADERS[name])) is not None:
        return False
    return not config.allowed_networks or device_network_allowed(address)


def _admits(device, address: str) -> bool:
    """:func:`wifi_request_allowed`, remembered for the kept row and its last address."""
    seen = _admitted.get(device.device_id)
    if seen is not None and seen[0] is device and seen[1] == address:
        return True
    if not wifi_request_allowed(device, address=address):
        return False
    _admitted[device.device_id] = (device, address)
    return True


def _throttle_keys(environ: dict, device_id: str) -> tuple[str, str]:
    """The keys the two device throttles count this machine's polls from here under."""
    meta = {k: environ[k] for k in ("REMOTE_ADDR", "HTTP_X_FORWARDED_FOR") if k in environ}
    request = SimpleNamespace(META=meta, headers={}, method="GET")
    view = SimpleNamespace(kwargs={"device_id": device_id})
    return (
        DeviceAddressThrottle().get_cache_key(request, view),
        DeviceThrottle().get_cache_key(request, view),
    )


def _fixed_headers(secure: bool) -> list[tuple[str, str]]:
    """The headers the shortcut answers an idle poll with, but the request id, made once."""
    headers = _headers[secure] = idle_answer.view_answer(PollView, secure)[0]
    return headers


def _settings_changed(*, setting: str, **kwargs) -> None:
    global _config
    _config = None
    _headers.clear()
    _keys.clear()
    _admitted.clear()
    windows.forget()


setting_changed.connect(_settings_changed, dispatch_uid="devices.api.kept_poll")
