"""The alerts' routes under /api/v1/ (included by ``vending_site.urls``)."""

from django.urls import re_path

from . import views

api_v1_patterns = [
    re_path(r"^alerts/?$", views.AlertListView.as_view(), name="alert-list"),
    re_path(
        r"^alerts/(?P<pk>[^/]+)/acknowledge/?$",
        views.AlertAcknowledgeView.as_view(),
        name="alert-acknowledge",
    ),
    re_path(
        r"^alerts/(?P<pk>[^/]+)/resolve/?$",
        views.AlertResolveView.as_view(),
        name="alert-resolve",
    ),
]
