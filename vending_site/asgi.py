"""ASGI entry point: granian serves HTTP and the dashboard's WebSocket from here under
``make run`` (``manage.py serve``); in production (behind nginx) only the WebSocket, granian's
WSGI workers serving HTTP (``wsgi.py``, ``deploy/web.py``).

The firmware's requests go through :class:`~vending_site.http.asgi_devices.DeviceFront`:
the shortcuts the URLconf lists (``asgi_shortcuts``) may answer a poll on the event loop,
and Django's synchronous device handler answers the rest in one thread hop. Everything else
goes to Channels' router: Django's ASGI handler for HTTP, the consumers for WebSockets.
"""

import os
from importlib import import_module

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")

django_asgi_app = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from vending_site.http.asgi_devices import DeviceFront, SyncDeviceApp  # noqa: E402
from vending_site.http.handlers import DEVICE_PATH, DeviceApplication  # noqa: E402
from vending_site.live.routing import websocket_urlpatterns  # noqa: E402
from vending_site.live.socket_origin import SiteOriginValidator  # noqa: E402

_urls = import_module(settings.ROOT_URLCONF)

router = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Not Channels' AllowedHostsOriginValidator: with ALLOWED_HOSTS=* it admits any page.
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

application = DeviceFront(
    router,
    device_path=DEVICE_PATH,
    # Django's synchronous device handler (DEVICE_MIDDLEWARE), behind the shortcuts the WSGI
    # application has too (in the handler's thread: they query the database).
    device_app=SyncDeviceApp(DeviceApplication(_urls.wsgi_shortcuts)),
    # Answers of some polls before any thread hop, on the event loop; the URLconf names them
    # (the composition root), as it names the WSGI application's.
    shortcuts=_urls.asgi_shortcuts,
)
