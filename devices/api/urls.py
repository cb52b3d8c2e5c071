"""The device app's routes: the firmware's endpoints (exact, slash-free paths: the firmware
follows no redirects), device management for staff and kiosks, and ``/status``. Included by
``vending_site.urls``."""

from django.urls import path, re_path

from . import device_views, fleet_views, kept_poll, poll_shortcut, shed_poll
from .views import (
    DeviceAdmissionView,
    DeviceAutoSelectView,
    DeviceCommandView,
    DeviceListView,
    DeviceSelectView,
    StatusView,
)

# Under /api/v1/ (the namespace api-v1).
api_v1_patterns = [
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
    # Locations, routes and machines (fleet_views). machines/<id>/slots and /restock are
    # inventory's (inventory.api.urls): these patterns end at the id, so they never match.
    re_path(r"^locations/?$", fleet_views.LocationListView.as_view(), name="location-list"),
    re_path(
        r"^locations/(?P<pk>[^/]+)/?$",
        fleet_views.LocationDetailView.as_view(),
        name="location-detail",
    ),
    re_path(r"^routes/?$", fleet_views.RouteListView.as_view(), name="route-list"),
    re_path(
        r"^routes/(?P<pk>[^/]+)/?$", fleet_views.RouteDetailView.as_view(), name="route-detail"
    ),
    re_path(r"^machines/?$", fleet_views.MachineListView.as_view(), name="machine-list"),
    re_path(
        r"^machines/(?P<device_id>[^/]+)/?$",
        fleet_views.MachineDetailView.as_view(),
        name="machine-detail",
    ),
]

# At the root: what the deployed firmware calls (PROTOCOL.md), both WiFi dialects.
firmware_patterns = [
    path("esp32/register", device_views.RegisterView.as_view(), name="esp32-register"),
    path("esp32/commands/<str:device_id>", device_views.PollView.as_view(), name="esp32-poll"),
    path("esp32/confirm", device_views.ConfirmView.as_view(), name="esp32-confirm"),
    path(
        "esp32/wifi/register",
        device_views.DocumentedRegisterView.as_view(),
        name="esp32-wifi-register",
    ),
    path("esp32/wifi/command", device_views.DocumentedPollView.as_view(), name="esp32-wifi-poll"),
    path("esp32/wifi/confirm", device_views.ConfirmView.as_view(), name="esp32-wifi-confirm"),
]

# At the root: the original device-management paths, and the public status.
management_patterns = [
    path("esp32/devices/list", DeviceListView.as_view(), name="esp32-devices-list"),
    path("esp32/devices/select", DeviceSelectView.as_view(), name="esp32-devices-select"),
    path(
        "esp32/devices/auto-select",
        DeviceAutoSelectView.as_view(),
        name="esp32-devices-auto-select",
    ),
    path("status", StatusView.as_view(), name="status"),
]

# The v2.1 poll answered in front of Django's handler under WSGI: from memory when the
# machine is kept (kept_poll.py); idle, unexamined, when it has waited too long for the
# server (shed_poll.py, either dialect); else by the same services (poll_shortcut.py).
wsgi_shortcuts = [kept_poll.answer, shed_poll.answer, poll_shortcut.answer]
# Under the ASGI server (manage.py serve): the kept idle poll on the event loop, then the
# poll the device thread's queue would keep too long, before the thread hop to the WSGI
# shortcuts above (vending_site.http.asgi_devices).
asgi_shortcuts = [kept_poll.answer_scope, shed_poll.answer_scope]
