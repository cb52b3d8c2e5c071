""" "Needs attention", pinned at the top of the dashboard: the alerts not yet resolved.

The list comes with the state document and stays current through ``alert`` live events; each
alert carries its action (settle an unconfirmed vend through ``/dashboard/api/transactions/
resolve``, approve a machine through ``/dashboard/api/machines/approve``), and
:func:`acknowledge` records who took it on. A Driver sees the alerts of the machines of their
routes only; alerts about no machine (a silent process, a failing webhook) are shown to those
who see every machine.
"""

from typing import Any

from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from vending_site.alerts import services
from vending_site.alerts.selectors import alert_payload, open_alerts
from vending_site.auth.roles import requires
from vending_site.http.errors import InvalidRequest

ACKNOWLEDGE_PERMISSION = "vending_site.change_alert"
VIEW_ALERTS_PERMISSION = "vending_site.view_alert"
ATTENTION_LIMIT = 100  # a fleet-wide storm still renders; the admin lists the rest


def attention_feed(
    *, user, machine_ids: frozenset[str] | None, public: bool
) -> list[dict[str, Any]]:
    """The unresolved alerts ``user`` may see, most pressing first; ``machine_ids`` is their
    machine scope (None: every machine). A public dashboard shows them to anyone."""
    if not public and not (user and user.is_staff and user.has_perm(VIEW_ALERTS_PERMISSION)):
        return []
    rows = open_alerts(device_ids=machine_ids)
    return [alert_payload(alert) for alert in rows[:ATTENTION_LIMIT]]


class AcknowledgeSerializer(serializers.Serializer):
    alert_id = serializers.IntegerField(min_value=1)
    note = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


@api_view(["POST"])
@authentication_classes([SessionAuthentication])
@permission_classes([requires(ACKNOWLEDGE_PERMISSION)])
def acknowledge(request: Request) -> Response:
    """``POST /dashboard/api/alerts/acknowledge`` with ``{"alert_id", "note"?}``: the alert
    service's acknowledgement (404 for an unknown alert, 409 for a resolved one)."""
    if not isinstance(request.data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    data = AcknowledgeSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    alert = services.acknowledge(
        alert_id=data.validated_data["alert_id"],
        user=request.user,
        note=data.validated_data["note"],
    )
    return Response(alert_payload(alert))
