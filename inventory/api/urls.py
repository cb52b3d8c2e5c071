"""The inventory app's routes under /api/v1/ (the namespace api-v1), included by
``vending_site.urls``."""

from django.urls import re_path

from .picklist_views import PickListView
from .views import MachineRestockView, MachineSlotsView, MachineSlotView

api_v1_patterns = [
    re_path(
        r"^machines/(?P<device_id>[^/]+)/slots/?$",
        MachineSlotsView.as_view(),
        name="machine-slots",
    ),
    re_path(
        r"^machines/(?P<device_id>[^/]+)/slots/(?P<number>[0-9]+)/?$",
        MachineSlotView.as_view(),
        name="machine-slot",
    ),
    re_path(
        r"^machines/(?P<device_id>[^/]+)/restock/?$",
        MachineRestockView.as_view(),
        name="machine-restock",
    ),
    re_path(r"^picklist/?$", PickListView.as_view(), name="picklist"),
]
