"""Alerts over REST, for staff: ``GET /api/v1/alerts/``, ``POST
/api/v1/alerts/<id>/acknowledge/`` and ``.../resolve/`` with ``{"note"}``. Thin: check the
permission, validate the note, call one ``vending_site.alerts.services`` function."""

from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from vending_site.auth.roles import is_route_bound, requires
from vending_site.live.audience import machine_scope

from .. import services
from ..models import Alert
from ..selectors import alerts
from . import docs
from .filtersets import AlertFilterSet
from .serializers import AlertNoteSerializer, AlertSerializer

VIEW, HANDLE = "vending_site.view_alert", "vending_site.change_alert"


class AlertListView(generics.ListAPIView):
    permission_classes = (requires(VIEW),)
    serializer_class = AlertSerializer
    filterset_class = AlertFilterSet

    @docs.ALERT_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no database
            return Alert.objects.none()
        queryset = alerts()
        if is_route_bound(self.request.user):
            queryset = queryset.filter(
                tags__device__in=list(machine_scope(self.request.user) or ())
            )
        return queryset


class _AlertAction(APIView):
    permission_classes = (requires(HANDLE),)
    service = staticmethod(services.acknowledge)

    def _run(self, request: Request, pk: str) -> Response:
        note = AlertNoteSerializer(data=request.data if request.data is not None else {})
        note.is_valid(raise_exception=True)
        alert = self.service(alert_id=pk, user=request.user, note=note.validated_data["note"])
        return Response(AlertSerializer(alert).data)


class AlertAcknowledgeView(_AlertAction):
    service = staticmethod(services.acknowledge)

    @docs.ALERT_ACKNOWLEDGE
    def post(self, request: Request, pk: str) -> Response:
        return self._run(request, pk)


class AlertResolveView(_AlertAction):
    service = staticmethod(services.resolve)

    @docs.ALERT_RESOLVE
    def post(self, request: Request, pk: str) -> Response:
        return self._run(request, pk)
