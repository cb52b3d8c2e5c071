"""Django's synchronous request handlers for the web servers' entry points.

``vending_site.wsgi`` (granian's WSGI workers, production) sends every request through them,
and ``vending_site.asgi`` (``manage.py serve``) the firmware's: the firmware's requests
(register, poll, confirm: :data:`DEVICE_PATH`) go through :class:`DeviceHandler`, with
``DEVICE_MIDDLEWARE`` (the project's middleware without what serves browsers and REST users
only), everything else through :class:`Handler` and ``MIDDLEWARE``. Both resolve with
``vending_site.urls_wsgi``: the same routes, with synchronous views where the ASGI URLconf
has async ones (Django would run those through ``async_to_sync``: a thread and an event loop
per request).
"""

import re

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler

# Exactly the paths of devices.api.urls.firmware_patterns (a test holds the two together).
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


def answer_device(shortcuts, handler, environ, start_response):
    """A firmware request's WSGI answer: the first of ``shortcuts`` (callables taking the
    ``environ``) that answers it, else ``handler``'s. A shortcut returns None to leave the
    request to the next, an ``HttpResponse``, or the WSGI answer ``(status, headers, body)``
    when it is made without Django's response machinery."""
    for shortcut in shortcuts:
        response = shortcut(environ)
        if type(response) is tuple:
            status, headers, body = response
            start_response(status, headers)
            return [body]
        if response is not None:
            # As WSGIHandler sends its response (the shortcuts set no cookies).
            start_response(f"{response.status_code} {response.reason_phrase}", [*response.items()])
            return response
    return handler(environ, start_response)


class DeviceApplication:
    """The WSGI application of the firmware's requests: :func:`answer_device` with
    ``shortcuts`` and a :class:`DeviceHandler`."""

    def __init__(self, shortcuts) -> None:
        self.shortcuts = list(shortcuts)
        self.handler = DeviceHandler()

    def __call__(self, environ, start_response):
        return answer_device(self.shortcuts, self.handler, environ, start_response)
