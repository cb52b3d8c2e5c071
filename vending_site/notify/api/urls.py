"""Webhook subscriptions under /api/v1/ (the namespace api-v1), included by
``vending_site.urls``."""

from django.urls import re_path

from .views import (
    DeliveryReplayView,
    WebhookDeliveriesView,
    WebhookDetailView,
    WebhookListView,
    WebhookRotateSecretView,
)

_ID = r"(?P<pk>[0-9]{1,19})"

api_v1_patterns = [
    re_path(r"^webhooks/?$", WebhookListView.as_view(), name="webhook-list"),
    re_path(rf"^webhooks/{_ID}/?$", WebhookDetailView.as_view(), name="webhook"),
    re_path(
        rf"^webhooks/{_ID}/rotate-secret/?$",
        WebhookRotateSecretView.as_view(),
        name="webhook-rotate-secret",
    ),
    re_path(
        rf"^webhooks/{_ID}/deliveries/?$",
        WebhookDeliveriesView.as_view(),
        name="webhook-deliveries",
    ),
    re_path(
        rf"^webhooks/{_ID}/deliveries/(?P<delivery_id>[0-9]{{1,19}})/replay/?$",
        DeliveryReplayView.as_view(),
        name="webhook-delivery-replay",
    ),
]
