"""WSGI entry point, for tools that want one; the server itself runs on ASGI (Daphne)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")

application = get_wsgi_application()
