"""``vending_alerts_open{rule}`` at ``/metrics``: alerts not resolved per rule, counted when
Prometheus scrapes (registered in ``VendingSiteConfig.ready``). One query."""

from collections.abc import Iterable

from django.db.models import Count, Q
from prometheus_client.core import GaugeMetricFamily

from .models import AlertRule, AlertState


class AlertsCollector:
    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "vending_alerts_open",
            "Alerts open or acknowledged (not resolved), per rule.",
            labels=["rule"],
        )
        rows = (
            AlertRule.objects.annotate(
                unresolved=Count("alerts", filter=~Q(alerts__state=AlertState.RESOLVED))
            )
            .order_by("key")
            .values_list("key", "unresolved")
        )
        for key, count in rows:
            gauge.add_metric([key], count)
        yield gauge
