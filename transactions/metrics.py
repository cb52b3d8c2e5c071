"""The vends' gauges at ``/metrics``, read from the database when Prometheus scrapes
(registered with ``vending_site.observability.metrics`` in ``TransactionsConfig.ready``). The vend
counters
are ``vending_site.observability.metrics``'s, counted by :mod:`transactions.lifecycle`."""

from collections.abc import Iterable

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from devices.choices import CommandState
from devices.models import Command

from .choices import TransactionState
from .models import Transaction


class VendsCollector:
    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "vending_command_queue_depth",
            "Commands waiting for delivery (queued) or for their result (sent).",
            labels=["state"],
        )
        counts = dict.fromkeys((CommandState.QUEUED, CommandState.SENT), 0)
        rows = (
            Command.objects.filter(state__in=list(counts))
            .order_by()
            .values_list("state")
            .annotate(n=Count("id"))
        )
        counts.update(dict(rows))
        for state, count in counts.items():
            depth.add_metric([str(state)], count)
        yield depth

        awaiting = GaugeMetricFamily(
            "vending_unconfirmed_vends",
            "Vends in state unconfirmed: the machine never said whether it dispensed.",
        )
        awaiting.add_metric(
            [], Transaction.objects.filter(state=TransactionState.UNCONFIRMED).count()
        )
        yield awaiting
