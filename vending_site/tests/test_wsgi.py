"""The WSGI application: the firmware's requests go through DEVICE_MIDDLEWARE, the rest
through MIDDLEWARE, and each request is logged once in the access log (vending_site/wsgi.py)."""

import asyncio
import io
import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from wsgiref.util import setup_testing_defaults

import pytest
from django.test import override_settings
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse
from django.urls.resolvers import RoutePattern
from rest_framework_api_key.models import APIKey

from devices.api.device_views import DeviceEndpoint
from transactions.models import Transaction
from transactions.tests.test_vend_api import DEVICE_ID, _confirm_when_delivered
from vending_site.observability.logging import make_formatter
from vending_site.wsgi import DEVICE_PATH, Application, application

# The firmware's requests leave no session, cookie or connection behind for the next test.
pytestmark = pytest.mark.django_db(transaction=True)

MAC = "6C:C8:40:4F:E0:3C"


def call(
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    query: str = "",
    app=None,
    remote_addr: str = "127.0.0.1",
    **headers,
) -> tuple:
    """One request into the application (``app``, default the module's) as a WSGI server
    makes it: (status, headers, body)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote_addr,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
    }
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    setup_testing_defaults(environ)
    answered = {}

    def start_response(status, response_headers, exc_info=None):
        answered["status"] = int(status.split()[0])
        answered["headers"] = {name.lower(): value for name, value in response_headers}

    response = (app or application)(environ, start_response)
    try:
        content = b"".join(response)
    finally:
        if hasattr(response, "close"):  # optional in WSGI: a list of bytes has none
            response.close()
    return answered["status"], answered["headers"], content


def routes():
    """Every top-level path() of the URLconf, its converters filled in, with its view."""
    for pattern in get_resolver().url_patterns:
        if isinstance(pattern, URLPattern) and isinstance(pattern.pattern, RoutePattern):
            route = re.sub(r"<(?:\w+:)?\w+>", "ESP32_6CC8404FE03C", str(pattern.pattern))
            yield "/" + route, getattr(pattern.callback, "view_class", None)


def test_the_device_paths_are_exactly_the_firmwares_endpoints():
    device_paths = set()
    for path, view_class in routes():
        is_device_view = isinstance(view_class, type) and issubclass(view_class, DeviceEndpoint)
        assert bool(DEVICE_PATH.fullmatch(path)) == is_device_view, path
        if is_device_view:
            device_paths.add(path)
    assert len(device_paths) == 6  # register, poll, confirm in each of the two dialects
    for other in ("/esp32/devices/list", "/esp32/commands/a/b", "/api/v1/vend/1", "/health"):
        assert not DEVICE_PATH.fullmatch(other)


def test_a_poll_goes_through_the_device_middleware(online_device):
    status, headers, content = call(f"/esp32/commands/{online_device.device_id}")

    assert (status, content) == (200, b"null")
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # RequestIdMiddleware
    assert headers["x-content-type-options"] == "nosniff"  # SecurityMiddleware
    assert "x-frame-options" not in headers  # no browser middleware ran
    assert "set-cookie" not in headers and "vary" not in headers


def test_the_staff_endpoints_under_esp32_keep_the_whole_middleware(online_device):
    status, headers, _content = call("/esp32/devices/list")

    assert status in (401, 403)  # no credentials: refused, by the REST API's rules
    assert headers["x-frame-options"] == "DENY"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])


def test_a_device_request_is_still_refused_outside_the_allowed_networks(online_device, settings):
    settings.DEVICE_ALLOWED_NETWORKS = ["192.0.2.0/24"]

    status, _headers, content = call(f"/esp32/commands/{online_device.device_id}")

    assert status == 403
    assert json.loads(content)["code"] == "network_not_allowed"


def test_an_oversized_confirmation_is_still_refused_with_413(online_device, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"device_id": MAC, "slot": 1, "success": True, "message": "x" * 2000})

    status, _headers, _content = call("/esp32/confirm", method="POST", body=body.encode())

    assert status == 413


def test_a_confirmation_through_the_device_middleware_is_answered(online_device):
    body = json.dumps({"device_id": MAC, "slot": 1, "success": True}).encode()

    status, _headers, content = call("/esp32/confirm", method="POST", body=body)

    assert status == 200
    assert json.loads(content)["status"] == "ignored"  # nothing was delivered to confirm


# --- The WSGI URLconf: the same routes, synchronous views -----------------------------------


def every_route(patterns, prefix="", namespace=""):
    """(route, name, callback) of every pattern, includes walked."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from every_route(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        else:
            name = f"{namespace}{pattern.name}" if pattern.name else None
            yield prefix + str(pattern.pattern), name, pattern.callback


def test_the_wsgi_routes_are_the_asgi_routes_without_an_async_view():
    from vending_site.urls import build

    asgi_routes = list(every_route(build(asgi=True)))
    wsgi_routes = list(every_route(build(asgi=False)))

    assert [r[:2] for r in wsgi_routes] == [r[:2] for r in asgi_routes]
    assert [r[1] for r in wsgi_routes if asyncio.iscoroutinefunction(r[2])] == []
    # ... where the ASGI routes have async views: the vend's.
    expected = {"api-v1:vend", "vend-legacy"}
    assert {r[1] for r in asgi_routes if asyncio.iscoroutinefunction(r[2])} == expected


def test_the_wsgi_urlconf_reverses_every_name_as_the_root_one():
    from vending_site import urls, urls_wsgi

    names = [name for route, name, _ in every_route(urls.urlpatterns) if name]
    assert len(names) > 20
    for name in names:
        try:
            expected = reverse(name, urlconf=urls)
        except NoReverseMatch:  # needs arguments; resolving is the other test's part
            continue
        assert reverse(name, urlconf=urls_wsgi) == expected, name
    assert get_resolver(urls_wsgi).resolve("/api/v1/vend/3").func.__name__ == "vend_sync"


def vend_through_wsgi(body: dict) -> tuple:
    _key, secret = APIKey.objects.create_key(name="kiosk")
    return call(
        "/api/v1/vend/3",
        method="POST",
        body=json.dumps(body).encode(),
        authorization=f"Api-Key {secret}",
    )


def test_under_wsgi_a_vend_with_wait_answers_200_once_the_machine_confirms(online_device):
    errors: list = []
    machine = threading.Thread(target=_confirm_when_delivered, args=(errors,))
    machine.start()
    try:
        status, _headers, content = vend_through_wsgi({"device_id": DEVICE_ID, "wait": 5})
    finally:
        machine.join(timeout=10)

    assert not machine.is_alive() and errors == []
    assert status == 200, content
    assert json.loads(content)["state"] == "succeeded"
    assert Transaction.objects.get().state == "succeeded"


def test_under_wsgi_a_vend_with_wait_answers_202_when_nothing_settles_in_time(online_device):
    started = time.monotonic()
    status, headers, content = vend_through_wsgi({"device_id": DEVICE_ID, "wait": 0.3})

    assert status == 202, content
    assert json.loads(content)["state"] == "queued"
    assert headers["location"].endswith(f"/api/v1/transactions/{json.loads(content)['id']}")
    assert time.monotonic() - started >= 0.3  # the wait was honoured (a load cannot shorten it)


@pytest.mark.parametrize("path", ["/api/v1/nowhere", "/esp32/commands/a/b", "/esp32/nowhere"])
def test_under_wsgi_an_unknown_api_or_device_path_is_a_json_404(path):
    status, headers, content = call(path)

    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(content)["code"] == "not_found"


# --- The access log -------------------------------------------------------------------------


@contextmanager
def access_log():
    """The lines the ``vending.access`` logger writes meanwhile, rendered by the project's
    JSON formatter, as dicts (the list fills when the block ends)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("json"))
    logger = logging.getLogger("vending.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    lines: list[dict] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines() if line)


def test_each_request_is_logged_once_with_the_request_id_it_was_answered_with(online_device):
    with override_settings(WEB_ACCESS_LOG=True):
        app = Application()  # reads WEB_ACCESS_LOG once, as each worker does
    poll = f"/esp32/commands/{online_device.device_id}"
    with access_log() as lines:
        polled = call(poll, app=app, x_request_id="poll-1", user_agent="ESP32-test/2.1")
        missing = call("/api/v1/nowhere", app=app, query="page=2")  # the id is generated

    assert polled[0] == 200 and missing[0] == 404
    assert len(lines) == 2, lines
    first, second = lines
    assert first == {
        **first,
        "logger": "vending.access",
        "level": "info",
        "event": "request",
        "method": "GET",
        "path": poll,
        "status": 200,
        "remote_addr": "127.0.0.1",
        "request_id": "poll-1",
        "user_agent": "ESP32-test/2.1",
    }
    assert polled[1]["x-request-id"] == "poll-1"
    assert first["duration_ms"] >= 0 and "timestamp" in first
    assert (second["method"], second["path"], second["query"]) == (
        "GET",
        "/api/v1/nowhere",
        "page=2",
    )
    assert second["status"] == 404
    assert second["request_id"] == missing[1]["x-request-id"]  # the one Django made up
    assert re.fullmatch(r"[0-9a-f]{32}", second["request_id"])
    assert second["bytes"] == len(missing[2]) == int(missing[1]["content-length"])


def test_with_web_access_log_off_no_request_is_logged():
    with override_settings(WEB_ACCESS_LOG=False):
        quiet = Application()
    with override_settings(WEB_ACCESS_LOG=True):
        logging_app = Application()
    with access_log() as lines:
        assert call("/api/v1/nowhere", app=quiet, x_request_id="off-1")[0] == 404
    with access_log() as control:
        assert call("/api/v1/nowhere", app=logging_app, x_request_id="on-1")[0] == 404

    assert lines == []
    assert [line["request_id"] for line in control] == ["on-1"]  # the same request, logged
