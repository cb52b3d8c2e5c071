"""The device app's routes: the firmware's endpoints (exact, slash-free paths: the firmware
follows no redirects), device management for staff and kiosks, and ``/status``. Included by
``vending_site.urls``."""

from django.urls import path, re_path

from . import device_views
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
