"""Filters of the alert list: state (repeatable), rule (a key), severity (repeatable)."""

import django_filters

from ..models import Alert, AlertState, Severity


class AlertFilterSet(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=AlertState.choices)
    rule = django_filters.CharFilter(field_name="rule__key", label="Rule key")
    severity = django_filters.MultipleChoiceFilter(choices=Severity.choices)

    class Meta:
        model = Alert
        fields = ["state", "rule", "severity"]
