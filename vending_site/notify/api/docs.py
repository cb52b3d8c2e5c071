"""The OpenAPI description of the webhook subscriptions (``vending_site.notify.api.views``).
Shared pieces: ``vending_site.http.openapi``."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema

from vending_site.http.openapi import AUTHENTICATED, errors

from .serializers import (
    DeliverySerializer,
    WebhookSerializer,
    WebhookWithSecretSerializer,
    WebhookWriteSerializer,
)

_TAG = ["webhooks"]
_ID = OpenApiParameter(
    "pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="The subscription's id."
)
_DELIVERY = OpenApiParameter(
    "delivery_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The delivery's id."
)
_URL_RULES = (
    " The URL must be http(s), and every address its host resolves to public, unless inside "
    "WEBHOOK_ALLOWED_NETWORKS: a loopback, private, link-local, multicast, reserved or cloud "
    "metadata address is 400 naming it (the same check runs again at each delivery)."
)

WEBHOOK_LIST = extend_schema(
    tags=_TAG,
    summary="Webhook subscriptions (staff: vending_site.view_endpoint)",
    description="Paginated (`limit`, `offset`). Secrets are never listed.",
    responses={200: WebhookSerializer(many=True), **errors(*AUTHENTICATED)},
)

WEBHOOK_CREATE = extend_schema(
    tags=_TAG,
    summary="Subscribe a URL to event types (staff: vending_site.add_endpoint)",
    description="Answers 201 with the signing `secret` (whsec_...), shown this once. Each "
    "event is POSTed as JSON signed per Standard Webhooks (webhook-id, webhook-timestamp, "
    "webhook-signature). An unknown event type is 400 naming it." + _URL_RULES,
    request=WebhookWriteSerializer,
    responses={201: WebhookWithSecretSerializer, **errors(400, *AUTHENTICATED)},
    examples=[
        OpenApiExample(
            "vend outcomes to an ERP",
            value={
                "url": "https://erp.example.com/hooks/vending",
                "events": ["vend.succeeded", "vend.failed"],
                "name": "ERP",
            },
            request_only=True,
        ),
    ],
)

WEBHOOK_READ = extend_schema(
    tags=_TAG,
    summary="One subscription, without its secret (staff: vending_site.view_endpoint)",
    parameters=[_ID],
    responses={200: WebhookSerializer, **errors(400, *AUTHENTICATED, 404)},
)

_CHANGE = "Changes the URL, events, name, filters or is_active." + _URL_RULES
WEBHOOK_REPLACE = extend_schema(
    tags=_TAG,
    summary="Replace a subscription (staff: vending_site.change_endpoint)",
    description=_CHANGE + " `url` and `events` are required.",
    parameters=[_ID],
    request=WebhookWriteSerializer,
    responses={200: WebhookSerializer, **errors(400, *AUTHENTICATED, 404)},
)
WEBHOOK_UPDATE = extend_schema(
    tags=_TAG,
    summary="Change a subscription (staff: vending_site.change_endpoint)",
    description=_CHANGE + " Only the fields sent change.",
    parameters=[_ID],
    request=WebhookWriteSerializer,
    responses={200: WebhookSerializer, **errors(400, *AUTHENTICATED, 404)},
)
WEBHOOK_DELETE = extend_schema(
    tags=_TAG,
    summary="Delete a subscription and its deliveries (staff: vending_site.delete_endpoint)",
    parameters=[_ID],
    responses={204: None, **errors(400, *AUTHENTICATED, 404)},
)
WEBHOOK_ROTATE = extend_schema(
    tags=_TAG,
    summary="Give a subscription a new secret (staff: vending_site.change_endpoint)",
    description="The new secret is in the answer, shown this once; every message sent from "
    "now on (retries of older ones too) is signed with it.",
    parameters=[_ID],
    request=None,
    responses={200: WebhookWithSecretSerializer, **errors(400, *AUTHENTICATED, 404)},
)
WEBHOOK_DELIVERIES = extend_schema(
    tags=_TAG,
    summary="A subscription's deliveries with every try (staff: vending_site.view_delivery)",
    description="Newest first, paginated (`limit`, `offset`). `state` filters: pending, "
    "delivered, failed.",
    parameters=[
        _ID,
        OpenApiParameter(
            "state", OpenApiTypes.STR, enum=["pending", "delivered", "failed"], required=False
        ),
    ],
    responses={200: DeliverySerializer(many=True), **errors(400, *AUTHENTICATED, 404)},
)
DELIVERY_REPLAY = extend_schema(
    tags=_TAG,
    summary="Send a delivery again (staff: vending_site.change_delivery)",
    description="Puts the delivery back in the queue, due now, with its tries counted from "
    "zero. It keeps its webhook-id, so a receiver that already has it can tell. One a "
    "notifier is sending at this moment is left to that send (it is not sent twice at once).",
    parameters=[_ID, _DELIVERY],
    request=None,
    responses={202: DeliverySerializer, **errors(400, *AUTHENTICATED, 404)},
)
