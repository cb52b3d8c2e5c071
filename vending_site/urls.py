"""URLs. Device paths are exact and slash-free (the firmware follows no redirects); REST
paths accept an optional trailing slash so no client is ever redirected."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from devices.api import device_views, long_poll
from devices.api.views import (
    DeviceAutoSelectView,
    DeviceCommandView,
    DeviceListView,
    DeviceSelectView,
    StatusView,
)
from transactions.api import views as txn_views

from . import dashboard, metrics
from .health import HealthView

handler404 = "vending_site.errors.page_not_found"

UUID = r"(?P<pk>[0-9a-fA-F-]{32,36})"

api_v1 = [
    re_path(r"^auth/token/?$", TokenObtainPairView.as_view(), name="token"),
    re_path(r"^auth/token/refresh/?$", TokenRefreshView.as_view(), name="token-refresh"),
    re_path(r"^vend/(?P<slot_id>[^/]+)/?$", txn_views.vend, name="vend"),
    re_path(r"^transactions/?$", txn_views.TransactionListView.as_view(), name="transaction-list"),
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
]

device_protocol = [
    path("esp32/register", device_views.RegisterView.as_view(), name="esp32-register"),
    path(
        "esp32/commands/<str:device_id>",
        long_poll.holding(device_views.PollView),
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
        long_poll.holding(device_views.DocumentedPollView),
        name="esp32-wifi-poll",
    ),
    path("esp32/wifi/confirm", device_views.ConfirmView.as_view(), name="esp32-wifi-confirm"),
]

dashboard_api = [
    path("state", dashboard.state, name="state"),
    path("machines", dashboard.machines, name="machines"),
    path("machines/select", dashboard.select_device, name="select"),
    path("vend", dashboard.vend, name="vend"),
    path("ports/request", dashboard.port_request, name="port-request"),
    path("transactions", dashboard.transactions, name="transactions"),
    path("transactions/resolve", dashboard.resolve, name="resolve"),
    path("logs", dashboard.logs, name="logs"),
]

urlpatterns = [
    path("", dashboard.index, name="dashboard"),
    path("dashboard/api/", include((dashboard_api, "dashboard-api"))),
    # Browsers ask for it on every page (the admin's too); a 404 there is console noise.
    path("favicon.ico", RedirectView.as_view(url=static("dashboard/favicon.svg"))),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "api-v1"))),
    *device_protocol,
    path("esp32/devices/list", DeviceListView.as_view(), name="esp32-devices-list"),
    path("esp32/devices/select", DeviceSelectView.as_view(), name="esp32-devices-select"),
    path(
        "esp32/devices/auto-select",
        DeviceAutoSelectView.as_view(),
        name="esp32-devices-auto-select",
    ),
    # The original, unversioned vend path.
    re_path(r"^vend/(?P<slot_id>[^/]+)/?$", txn_views.vend, name="vend-legacy"),
    path("status", StatusView.as_view(), name="status"),
    path("health", HealthView.as_view(), name="health"),
    # Prometheus, for METRICS_ALLOWED_NETWORKS only (see vending_site/metrics.py).
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]
