"""WSGI entry point: gunicorn serves every HTTP request from here in production
(``deploy/gunicorn.conf.py``); Daphne (``asgi.py``) serves the WebSocket there, and everything
under ``make run``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")

application = get_wsgi_application()
