"""The alerts' REST bodies: an alert as :func:`vending_site.alerts.selectors.alert_payload`
shapes it (the same as its webhooks and live events), and the note staff may add."""

from rest_framework import serializers

from ..models import AlertState, Severity
from ..selectors import alert_payload


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    rule = serializers.CharField(help_text="The rule's key, e.g. machine_offline.")
    rule_name = serializers.CharField()
    subject = serializers.CharField(
        help_text="What it is about: machine:<device id>, slot:<id>, vend:<id>, "
        "service:<name>, endpoint:<id>."
    )
    title = serializers.CharField()
    severity = serializers.ChoiceField(choices=Severity.choices)
    state = serializers.ChoiceField(choices=AlertState.choices)
    opened_at = serializers.DateTimeField()
    checked_at = serializers.DateTimeField(help_text="When its condition was last seen to hold.")
    notifications = serializers.IntegerField(help_text="Announcements sent (1 + reminders).")
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    acknowledged_by = serializers.CharField(allow_null=True, help_text="A username.")
    acknowledgement_note = serializers.CharField(allow_blank=True)
    resolved_at = serializers.DateTimeField(allow_null=True)
    resolved_by = serializers.CharField(
        allow_null=True, help_text="A username; null when it resolved itself."
    )
    resolution_note = serializers.CharField(allow_blank=True)
    detail = serializers.DictField(help_text="What the rule found (its own keys).")
    tags = serializers.DictField(
        help_text="device, location, route (a list): what channels filter on."
    )
    action = serializers.DictField(
        allow_null=True,
        help_text='What to do about it: {"kind": "settle_vend", "transaction_id"}, '
        '{"kind": "approve_machine", "device_id"}, or null.',
    )
    device_id = serializers.CharField(allow_null=True)

    def to_representation(self, instance):
        return alert_payload(instance)


class AlertNoteSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
