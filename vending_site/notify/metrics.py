"""The notifier's numbers at ``/metrics`` (see :mod:`vending_site.observability.metrics`).

- ``vending_notify_deliveries_total{outcome}``: tries by outcome: ``delivered``, ``retry`` (a
  try failed, another is scheduled), ``failed`` (the last try failed; the delivery gave up).
- ``vending_notify_delivery_seconds``: from the event (the delivery's creation) to its
  successful delivery, retries included.
- ``vending_notify_queue_depth``: pending deliveries, due or waiting for a retry (read from
  the database when Prometheus scrapes).
"""

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from vending_site.observability.logging import get_logger

from .models import Delivery, DeliveryState

DELIVERIES = Counter(
    "vending_notify_deliveries_total",
    "Delivery tries by outcome: delivered, retry (will be tried again), failed (gave up).",
    ["outcome"],
)
DELIVERY_SECONDS = Histogram(
    "vending_notify_delivery_seconds",
    "Seconds from an event to its successful delivery to one endpoint, retries included.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600),
)

logger = get_logger(__name__)


def record_delivery(outcome: str, *, created_at: datetime, delivered_at: datetime) -> None:
    try:
        DELIVERIES.labels(outcome=outcome).inc()
        if outcome == "delivered":
            DELIVERY_SECONDS.observe(max((delivered_at - created_at).total_seconds(), 0.0))
    except OSError:  # a metrics file that cannot be written costs the count only
        logger.warning("metrics_write_failed", metric="vending_notify", exc_info=True)


class NotifyCollector:
    """The outbox's pending deliveries, counted when Prometheus scrapes (one indexed count)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "vending_notify_queue_depth", "Deliveries pending (due now or waiting to retry)."
        )
        depth.add_metric([], Delivery.objects.filter(state=DeliveryState.PENDING).count())
        yield depth
