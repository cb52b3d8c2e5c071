"""The inventory app's routes under /api/v1/ (the namespace api-v1), included by
``vending_site.urls``."""

from django.urls import re_path

from .catalog_views import (
    PlanogramCopyView,
    ProductDetailView,
    ProductListView,
    StockMovementListView,
)
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
    re_path(
        r"^machines/(?P<device_id>[^/]+)/planogram/copy/?$",
        PlanogramCopyView.as_view(),
        name="machine-planogram-copy",
    ),
    re_path(r"^products/?$", ProductListView.as_view(), name="product-list"),
    re_path(r"^products/(?P<pk>[0-9]{1,19})/?$", ProductDetailView.as_view(), name="product"),
    re_path(r"^stock-movements/?$", StockMovementListView.as_view(), name="stock-movements"),
    re_path(r"^picklist/?$", PickListView.as_view(), name="picklist"),
]
