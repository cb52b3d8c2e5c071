"""URLs: the apps' own routes (``devices.api.urls``, ``transactions.api.urls``,
``vending_site.dashboard.urls``) and the site's (admin, tokens, health, metrics, schema).
Device paths are exact and slash-free (the firmware follows no redirects); REST paths accept
an optional trailing slash so no client is ever redirected."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from devices.api import urls as device_urls
from inventory.api import urls as inventory_urls
from transactions.api import urls as vend_urls
from vending_site.alerts.api import urls as alert_urls
from vending_site.auth.logins import TokenObtainView, TokenRefreshThrottledView
from vending_site.dashboard import picklist as picklist_pages
from vending_site.dashboard import views as dashboard
from vending_site.dashboard.sales import sales_page
from vending_site.dashboard.stock import stock_page
from vending_site.http.health import HealthView
from vending_site.notify.api import urls as notify_urls
from vending_site.observability import metrics

handler404 = "vending_site.http.errors.page_not_found"


def _api_v1(*, asgi: bool) -> list:
    return [
        re_path(r"^auth/token/?$", TokenObtainView.as_view(), name="token"),
        re_path(
            r"^auth/token/refresh/?$", TokenRefreshThrottledView.as_view(), name="token-refresh"
        ),
        *vend_urls.api_v1_patterns(asgi=asgi),
        *device_urls.api_v1_patterns,
        *inventory_urls.api_v1_patterns,
        *alert_urls.api_v1_patterns,
        *notify_urls.api_v1_patterns,
    ]


def build(*, asgi: bool) -> list:
    """The routes, with the views for the ASGI server (``manage.py serve``) or the WSGI one
    (``deploy/web.py``).

    The vend's wait holds a request without a thread under ASGI, so its view is async
    there. A WSGI thread is held either way, and Django would run an async view through
    ``async_to_sync`` (a new thread and event loop per request), so the WSGI routes get the
    same view synchronous (``vending_site.urls_wsgi``).
    """
    return [
        path("", dashboard.index, name="dashboard"),
        path("sales/", sales_page, name="sales"),
        path("stock/", stock_page, name="stock"),
        path("dashboard/api/", include(("vending_site.dashboard.urls", "dashboard-api"))),
        path("picklist/", picklist_pages.picklist_page, name="picklist"),
        re_path(
            r"^machines/(?P<device_id>[^/]+)/fill/?$", picklist_pages.fill_page, name="machine-fill"
        ),
        # Browsers ask for it on every page (the admin's too); a 404 there is console noise.
        path("favicon.ico", RedirectView.as_view(url=static("dashboard/favicon.svg"))),
        path("admin/", admin.site.urls),
        path("api/v1/", include((_api_v1(asgi=asgi), "api-v1"))),
        *device_urls.firmware_patterns,
        *device_urls.management_patterns,
        *vend_urls.legacy_patterns(asgi=asgi),
        path("health", HealthView.as_view(), name="health"),
        # Prometheus, for METRICS_ALLOWED_NETWORKS only (see vending_site/observability/metrics.py).
        path("metrics", metrics.metrics_view, name="metrics"),
        path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
        # The split view serves its start-up script from a URL, not inline: the pages'
        # Content-Security-Policy (vending_site/http/csp.py) allows no inline script.
        path(
            "api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"
        ),
    ]


urlpatterns = build(asgi=True)

# Answers the WSGI application (vending_site.wsgi) tries before Django's handler for device
# paths: each returns a response, or None to leave the request to the handler.
wsgi_shortcuts = [*device_urls.wsgi_shortcuts]
# The same for the ASGI application (vending_site.asgi, ``manage.py serve``): async callables
# taking the ASGI scope, returning (status, headers, body) or None (vending_site.http.asgi_devices).
asgi_shortcuts = [*device_urls.asgi_shortcuts]
