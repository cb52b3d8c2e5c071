"""Webhook subscriptions over REST (staff, by role): thin views over
``vending_site.notify.services``."""

from django.db.models import QuerySet
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from vending_site.auth import roles
from vending_site.http.errors import InvalidRequest, NotFound
from vending_site.notify import outbox, services
from vending_site.notify.models import Delivery, DeliveryState, Endpoint, EndpointKind

from . import docs
from .serializers import (
    DeliverySerializer,
    WebhookSerializer,
    WebhookWithSecretSerializer,
    WebhookWriteSerializer,
)

_MAX_ID = 2**63 - 1
VIEW, ADD, CHANGE, DELETE = (
    "vending_site.view_endpoint",
    "vending_site.add_endpoint",
    "vending_site.change_endpoint",
    "vending_site.delete_endpoint",
)


class _RoleChecked:
    """``needs``: the permissions each HTTP method requires (``roles.requires``)."""

    needs: dict[str, tuple[str, ...]] = {}

    def get_permissions(self):
        method = self.request.method if self.request else "GET"
        method = "GET" if method in ("HEAD", "OPTIONS") else method
        return [roles.requires(*self.needs.get(method, (VIEW,)))()]


def _webhooks() -> QuerySet[Endpoint]:
    return Endpoint.objects.filter(kind=EndpointKind.WEBHOOK)


def _webhook(pk: str) -> Endpoint:
    endpoint = _webhooks().filter(pk=int(pk)).first() if int(pk) <= _MAX_ID else None
    if endpoint is None:
        raise NotFound(f"No webhook {pk[:20]}.", webhook=pk[:20])
    return endpoint


class WebhookListView(_RoleChecked, generics.ListAPIView):
    """``GET /api/v1/webhooks/``, ``POST`` to subscribe."""

    serializer_class = WebhookSerializer
    filter_backends = ()
    needs = {"GET": (VIEW,), "POST": (ADD,)}

    def get_queryset(self) -> QuerySet[Endpoint]:
        return _webhooks().order_by("id")

    @docs.WEBHOOK_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @docs.WEBHOOK_CREATE
    def post(self, request: Request) -> Response:
        serializer = WebhookWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        endpoint = services.create_webhook(
            url=data["url"],
            events=data["events"],
            name=data.get("name", ""),
            filters=data.get("filters"),
            user=request.user,
        )
        if data.get("is_active") is False:
            services.update_endpoint(endpoint, changes={"is_active": False})
        return Response(WebhookWithSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class WebhookDetailView(_RoleChecked, generics.GenericAPIView):
    """``GET``, ``PUT``, ``PATCH``, ``DELETE /api/v1/webhooks/<id>/``."""

    serializer_class = WebhookSerializer
    filter_backends = ()
    pagination_class = None
    needs = {"GET": (VIEW,), "PUT": (CHANGE,), "PATCH": (CHANGE,), "DELETE": (DELETE,)}

    @docs.WEBHOOK_READ
    def get(self, request: Request, pk: str) -> Response:
        return Response(WebhookSerializer(_webhook(pk)).data)

    @docs.WEBHOOK_REPLACE
    def put(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=False)

    @docs.WEBHOOK_UPDATE
    def patch(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=True)

    def _update(self, request: Request, pk: str, *, partial: bool) -> Response:
        endpoint = _webhook(pk)
        serializer = WebhookWriteSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if partial and not data:
            raise InvalidRequest("Send at least one of: url, events, name, filters, is_active.")
        if "events" in data:
            data["event_types"] = data.pop("events")
        if not data.get("name", "x"):
            data.pop("name")
        services.update_endpoint(endpoint, changes=data)
        return Response(WebhookSerializer(endpoint).data)

    @docs.WEBHOOK_DELETE
    def delete(self, request: Request, pk: str) -> Response:
        services.delete_endpoint(_webhook(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookRotateSecretView(_RoleChecked, generics.GenericAPIView):
    """``POST /api/v1/webhooks/<id>/rotate-secret/``."""

    serializer_class = WebhookWithSecretSerializer
    filter_backends = ()
    pagination_class = None
    needs = {"POST": (CHANGE,)}

    @docs.WEBHOOK_ROTATE
    def post(self, request: Request, pk: str) -> Response:
        endpoint = _webhook(pk)
        services.rotate_secret(endpoint)
        return Response(WebhookWithSecretSerializer(endpoint).data)


class WebhookDeliveriesView(_RoleChecked, generics.ListAPIView):
    """``GET /api/v1/webhooks/<id>/deliveries/``: newest first, with every try."""

    serializer_class = DeliverySerializer
    filter_backends = ()
    needs = {"GET": (VIEW, "vending_site.view_delivery")}

    def get_queryset(self) -> QuerySet[Delivery]:
        if getattr(self, "swagger_fake_view", False):
            return Delivery.objects.none()
        rows = outbox.endpoint_deliveries(_webhook(self.kwargs["pk"]))
        state = self.request.query_params.get("state")
        if state is not None:
            if state not in DeliveryState.values:
                raise InvalidRequest(
                    f"state must be one of {', '.join(DeliveryState.values)}, not {state[:20]!r}."
                )
            rows = rows.filter(state=state)
        return rows

    @docs.WEBHOOK_DELIVERIES
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class DeliveryReplayView(_RoleChecked, generics.GenericAPIView):
    """``POST /api/v1/webhooks/<id>/deliveries/<delivery_id>/replay/``."""

    serializer_class = DeliverySerializer
    filter_backends = ()
    pagination_class = None
    needs = {"POST": (VIEW, "vending_site.change_delivery")}

    @docs.DELIVERY_REPLAY
    def post(self, request: Request, pk: str, delivery_id: str) -> Response:
        endpoint = _webhook(pk)
        number = int(delivery_id)
        delivery = (
            Delivery.objects.filter(pk=number, endpoint=endpoint).first()
            if number <= _MAX_ID
            else None
        )
        if delivery is None:
            raise NotFound(f"No delivery {delivery_id[:20]} of webhook {endpoint.pk}.")
        services.replay_delivery(delivery)
        delivery = outbox.endpoint_deliveries(endpoint).get(pk=delivery.pk)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
