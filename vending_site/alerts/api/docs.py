"""The OpenAPI description of the alert endpoints (``vending_site.alerts.api.views``)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema

from vending_site.http.openapi import AUTHENTICATED, errors

from .serializers import AlertNoteSerializer, AlertSerializer

_ID = OpenApiParameter("id", {"type": "integer", "minimum": 1}, OpenApiParameter.PATH)

ALERT_LIST = extend_schema(
    tags=["alerts"],
    summary="Alerts, newest first (filter by state, rule, severity)",
    description="Every staff role may read them (vending_site.view_alert); a Driver sees "
    "only the alerts about the machines of their routes.",
    responses={200: AlertSerializer(many=True), **errors(400, *AUTHENTICATED)},
)
ALERT_ACKNOWLEDGE = extend_schema(
    tags=["alerts"],
    summary="Acknowledge an open alert (someone is on it: no more reminders)",
    description="Needs vending_site.change_alert (Operator, Technician). 409 when it is "
    "acknowledged or resolved already.",
    parameters=[_ID],
    request=AlertNoteSerializer,
    responses={200: AlertSerializer, **errors(400, *AUTHENTICATED, 404, 409)},
)
ALERT_RESOLVE = extend_schema(
    tags=["alerts"],
    summary="Resolve an alert by hand",
    description="Needs vending_site.change_alert (Operator, Technician). Sends "
    "alert.resolved. While its condition still holds, the rule opens no new alert for the "
    "subject during its cooldown. 409 when it is resolved already.",
    parameters=[_ID],
    request=AlertNoteSerializer,
    responses={200: AlertSerializer, **errors(400, *AUTHENTICATED, 404, 409)},
)
