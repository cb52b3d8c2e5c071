"""WSGI entry point: granian serves every HTTP request from here in production
(``deploy/web.py``); ``manage.py serve`` (``asgi.py``) serves the WebSocket there, and
everything under ``make run``.

The firmware's requests (register, poll, confirm: :data:`DEVICE_PATH`) go through a handler of
their own with ``DEVICE_MIDDLEWARE``, the project's middleware without what serves browsers
and REST users only (sessions, CSRF, messages, static files...). Everything else, the staff
endpoints under ``/esp32/devices/`` included, goes through ``MIDDLEWARE``. Before that handler,
the shortcuts the URLconf lists (``wsgi_shortcuts``: the v2.1 poll's,
``devices.api.poll_shortcut``) may answer a device request themselves. Both handlers
resolve with ``vending_site.urls_wsgi`` (``vending_site.http.handlers``).

The access log is written here (``WEB_ACCESS_LOG``, logger ``vending.access``), not by the
server, so each line carries the ``X-Request-ID`` the response went out with.
"""

import os
import time
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from vending_site.http.handlers import DEVICE_PATH, DeviceHandler, Handler, answer_device

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")


class Application:
    """Sends each request to the handler for its path, and logs it."""

    def __init__(self) -> None:
        get_wsgi_application()  # sets Django up
        from vending_site.observability.logging import get_logger

        self.handler = Handler()
        self.device_handler = DeviceHandler()
        # Answers of some device requests in front of the handler (DEVICE_POLL_SHORTCUT):
        # each returns None, an HttpResponse, or the WSGI answer as (status, headers, body)
        # when it is made without Django's response machinery. The URLconf names them (the
        # composition root).
        self.shortcuts = list(import_module(Handler.urlconf).wsgi_shortcuts)
        self.access = get_logger("vending.access") if settings.WEB_ACCESS_LOG else None

    def respond(self, environ, start_response):
        """The answer of the device poll's shortcut when it gives one, else the handler's."""
        if not DEVICE_PATH.fullmatch(environ.get("PATH_INFO", "")):
            return self.handler(environ, start_response)
        return answer_device(self.shortcuts, self.device_handler, environ, start_response)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.access is None:
            return self.respond(environ, start_response)
        started = time.perf_counter()
        answered = []

        def recording_start_response(status, headers, exc_info=None):
            answered[:] = [status, headers]
            return start_response(status, headers, exc_info)

        response = self.respond(environ, recording_start_response)
        status, headers = answered or ("500", [])
        request_id = length = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == "x-request-id":
                request_id = value
            elif lowered == "content-length":
                length = int(value) if value.isdigit() else None
        self.access.info(
            "request",
            method=environ.get("REQUEST_METHOD"),
            path=path,
            query=environ.get("QUERY_STRING") or None,
            status=int(status.split(None, 1)[0]),
            bytes=length,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            remote_addr=environ.get("REMOTE_ADDR"),
            request_id=request_id,
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        return response


application = Application()
