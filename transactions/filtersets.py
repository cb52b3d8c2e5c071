from datetime import UTC

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField

from devices.protocol import InvalidDeviceId, normalize_device_id

from .choices import TransactionState
from .models import Transaction


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 moment, converted to UTC here: ISO allows offsets to ±23:59, PostgreSQL
    only to ±15:59 (a 500 on the query), and a moment near year 1 or 9999 can fall outside
    the calendar once in UTC (a 500 on any database). Both become a 400 for the field."""

    def to_python(self, value):
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError(
                "Enter a date and time between the years 1 and 9999 in UTC.", code="invalid"
            ) from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class TransactionFilterSet(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=TransactionState.choices)
    device = django_filters.CharFilter(method="filter_device", label="Device id (any spelling)")
    slot = django_filters.NumberFilter(field_name="slot_number")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Transaction
        fields = ["state", "device", "slot", "created_after", "created_before"]

    def filter_device(self, queryset, name, value):
        try:
            device_id = normalize_device_id(value)
        except InvalidDeviceId:
            return queryset.none()
        return queryset.filter(device__device_id=device_id)
