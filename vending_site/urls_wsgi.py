"""The URLconf of the WSGI server (``vending_site.wsgi``): the routes of ``vending_site.urls``
with synchronous views where that one has async ones (see ``vending_site.urls.build``)."""

from vending_site.urls import (  # noqa: F401 - Django looks for handler404 here
    build,
    handler404,
    wsgi_shortcuts,
)

urlpatterns = build(asgi=False)
