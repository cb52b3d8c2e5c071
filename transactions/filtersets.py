import django_filters

from devices.protocol import InvalidDeviceId, normalize_device_id

from .choices import TransactionState
from .models import Transaction


class TransactionFilterSet(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=TransactionState.choices)
    device = django_filters.CharFilter(method="filter_device", label="Device id (any spelling)")
    slot = django_filters.NumberFilter(field_name="slot_number")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Transaction
        fields = ["state", "device", "slot", "created_after", "created_before"]

    def filter_device(self, queryset, name, value):
        try:
            device_id = normalize_device_id(value)
        except InvalidDeviceId:
            return queryset.none()
        return queryset.filter(device__device_id=device_id)
