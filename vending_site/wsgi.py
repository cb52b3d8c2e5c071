"""WSGI entry point: gunicorn serves every HTTP request from here in production
(``deploy/gunicorn.conf.py``); Daphne (``asgi.py``) serves the WebSocket there, and everything
under ``make run``.

The firmware's requests (register, poll, confirm: :data:`DEVICE_PATH`) go through a handler of
their own with ``DEVICE_MIDDLEWARE``, the project's middleware without what serves browsers
and REST users only (sessions, CSRF, messages, static files...). Everything else, the staff
endpoints under ``/esp32/devices/`` included, goes through ``MIDDLEWARE``. Both handlers
resolve with ``vending_site.urls_wsgi``: the same routes, with synchronous views where the
ASGI URLconf has async ones (Django would run those through ``async_to_sync``: a thread and
an event loop per request).
"""

import os
import re

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")

# Exactly the paths of vending_site.urls.device_protocol (a test holds the two together).
DEVICE_PATH = re.compile(
    r"/esp32/(?:register|confirm|commands/[^/]+|wifi/(?:register|command|confirm))"
)


class Handler(WSGIHandler):
    """Django's WSGI handler, resolving with the WSGI URLconf (synchronous views)."""

    urlconf = "vending_site.urls_wsgi"

    def get_response(self, request):
        request.urlconf = self.urlconf
        return super().get_response(request)


class DeviceHandler(Handler):
    """:class:`Handler` with its middleware chain built from ``DEVICE_MIDDLEWARE``."""

    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE; it is swapped for the time of the
        # build, once, while the application is imported (no request is being served yet).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.DEVICE_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


class Application:
    """Sends each request to the handler for its path."""

    def __init__(self) -> None:
        get_wsgi_application()  # sets Django up
        self.handler = Handler()
        self.device_handler = DeviceHandler()

    def __call__(self, environ, start_response):
        if DEVICE_PATH.fullmatch(environ.get("PATH_INFO", "")):
            return self.device_handler(environ, start_response)
        return self.handler(environ, start_response)


application = Application()
