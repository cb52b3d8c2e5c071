"""ASGI entry point: Daphne serves HTTP and the dashboard's WebSocket from here under
``make run``; in production (behind nginx) only the WebSocket, granian serving HTTP
(``wsgi.py``, ``deploy/web.py``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")

django_asgi_app = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from vending_site.live.routing import websocket_urlpatterns  # noqa: E402
from vending_site.live.socket_origin import SiteOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Not Channels' AllowedHostsOriginValidator: with ALLOWED_HOSTS=* it admits any page.
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
