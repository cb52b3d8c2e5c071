"""The machines' gauges at ``/metrics``, read from the database when Prometheus scrapes
(registered with ``vending_site.observability.metrics`` in ``DevicesConfig.ready``)."""

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily

from .selectors import online_devices


class DevicesCollector:
    def collect(self) -> Iterable[GaugeMetricFamily]:
        online = GaugeMetricFamily(
            "vending_devices_online", "Devices seen within DEVICE_OFFLINE_AFTER seconds."
        )
        online.add_metric([], online_devices().count())
        yield online
