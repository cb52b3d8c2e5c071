"""URLs. Device paths are exact and slash-free (the firmware follows no redirects); REST
paths accept an optional trailing slash so no client is ever redirected."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from devices.api import device_views
from devices.api.views import (
    DeviceAdmissionView,
    DeviceAutoSelectView,
    DeviceCommandView,
    DeviceListView,
    DeviceSelectView,
    StatusView,
)
from transactions.api import views as txn_views
from vending_site.auth.logins import TokenObtainView, TokenRefreshThrottledView
from vending_site.dashboard import views as dashboard
from vending_site.http.health import HealthView
from vending_site.observability import metrics

handler404 = "vending_site.http.errors.page_not_found"

UUID = r"(?P<pk>[0-9a-fA-F-]{32,36})"


def _api_v1(vend) -> list:
    return [
        re_path(r"^auth/token/?$", TokenObtainView.as_view(), name="token"),
        re_path(
            r"^auth/token/refresh/?$", TokenRefreshThrottledView.as_view(), name="token-refresh"
        ),
        re_path(r"^vend/(?P<slot_id>[^/]+)/?$", vend, name="vend"),
        re_path(
            r"^transactions/?$", txn_views.TransactionListView.as_view(), name="transaction-list"
        ),
        re_path(
            rf"^transactions/{UUID}/?$",
            txn_views.TransactionDetailView.as_view(),
            name="transaction-detail",
        ),
        re_path(
            rf"^transactions/{UUID}/cancel/?$",
            txn_views.TransactionCancelView.as_view(),
            name="transaction-cancel",
        ),
        re_path(r"^devices/?$", DeviceListView.as_view(), name="device-list"),
        re_path(
            r"^devices/(?P<device_id>[^/]+)/commands/?$",
            DeviceCommandView.as_view(),
            name="device-commands",
        ),
        re_path(
            r"^devices/(?P<device_id>[^/]+)/admission/?$",
            DeviceAdmissionView.as_view(),
            name="device-admission",
        ),
    ]


def _device_protocol() -> list:
    return [
        path("esp32/register", device_views.RegisterView.as_view(), name="esp32-register"),
        path(
            "esp32/commands/<str:device_id>",
            device_views.PollView.as_view(),
            name="esp32-poll",
        ),
        path("esp32/confirm", device_views.ConfirmView.as_view(), name="esp32-confirm"),
        path(
            "esp32/wifi/register",
            device_views.DocumentedRegisterView.as_view(),
            name="esp32-wifi-register",
        ),
        path(
            "esp32/wifi/command",
            device_views.DocumentedPollView.as_view(),
            name="esp32-wifi-poll",
        ),
        path("esp32/wifi/confirm", device_views.ConfirmView.as_view(), name="esp32-wifi-confirm"),
    ]


dashboard_api = [
    path("state", dashboard.state, name="state"),
    path("machines", dashboard.machines, name="machines"),
    path("machines/select", dashboard.select_device, name="select"),
    path("machines/approve", dashboard.approve_device, name="approve"),
    path("vend", dashboard.vend, name="vend"),
    path("ports/request", dashboard.port_request, name="port-request"),
    path("transactions", dashboard.transactions, name="transactions"),
    path("transactions/resolve", dashboard.resolve, name="resolve"),
    path("logs", dashboard.logs, name="logs"),
]


def build(*, asgi: bool) -> list:
    """The routes, with the views for an ASGI server (Daphne) or a WSGI one (granian).

    The vend's wait holds a request without a thread under ASGI, so its view is async
    there. A WSGI thread is held either way, and Django would run an async
    view through ``async_to_sync`` (a new thread and event loop per request), so the WSGI
    routes get the same view synchronous (``vending_site.urls_wsgi``).
    """
    vend = txn_views.vend if asgi else txn_views.vend_sync
    return [
        path("", dashboard.index, name="dashboard"),
        path("dashboard/api/", include((dashboard_api, "dashboard-api"))),
        # Browsers ask for it on every page (the admin's too); a 404 there is console noise.
        path("favicon.ico", RedirectView.as_view(url=static("dashboard/favicon.svg"))),
        path("admin/", admin.site.urls),
        path("api/v1/", include((_api_v1(vend), "api-v1"))),
        *_device_protocol(),
        path("esp32/devices/list", DeviceListView.as_view(), name="esp32-devices-list"),
        path("esp32/devices/select", DeviceSelectView.as_view(), name="esp32-devices-select"),
        path(
            "esp32/devices/auto-select",
            DeviceAutoSelectView.as_view(),
            name="esp32-devices-auto-select",
        ),
        # The original, unversioned vend path.
        re_path(r"^vend/(?P<slot_id>[^/]+)/?$", vend, name="vend-legacy"),
        path("status", StatusView.as_view(), name="status"),
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
