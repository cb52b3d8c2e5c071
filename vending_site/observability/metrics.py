"""Prometheus metrics at ``GET /metrics``, correct across the server's several processes.

The stack is several processes (granian's web workers, ``manage.py serve``, ``run_serial_bridge``,
``run_discovery``, ``sweep_commands``, possibly one-shot commands from cron), and a vend can
reach its final state in any of them. Two kinds of numbers, two designs:

**Facts of the database** — devices online, queue depth (queued + sent commands), vends
awaiting staff (``unconfirmed``) — are computed when Prometheus scrapes, by
the collectors the apps register (:func:`register_scrape_time`): three cheap indexed queries,
always true whichever process changed the rows, and nothing to keep in sync.

**Events** — vends by outcome, vend latency, device polls — are counters and histograms in
prometheus_client's *multiprocess mode*: every process writes its own memory-mapped file under
``PROMETHEUS_MULTIPROC_DIR`` (default ``DATA_DIR/metrics``; settings export it before
prometheus_client is imported) and ``/metrics`` sums all files. Files of dead processes are
kept, because their counts are history (dropping them would make a counter go backwards); so
they do not pile up (cron runs a one-shot sweep every minute), each process that imports this
module (a web worker granian starts in place of a dead one included) folds the counter/histogram
files of processes that are gone into one ``*_archive.db`` file per kind, under a file lock, and
removes their gauge files. A scrape holds the same lock shared while it lists and reads the
files, so it never sees a count both in the archive and in the file it came from; the archive is
rewritten in a temporary file and swapped in with one rename, so no reader ever sees half an
archive. The file handling is :mod:`vending_site.observability.metrics_files` (no Django, so
granian's main
process folds its last workers' files too, once they have stopped: ``deploy/web.py``).
Limitation: the liveness check is ``kill(pid, 0)``, so all processes sharing a directory must
share a PID namespace (one host or one container; not a volume shared by containers): in
docker-compose.yml each service writes to its own subdirectory of the shared volume, and
``METRICS_COLLECT_DIR`` (the volume's root) is where ``/metrics`` reads them all. Wipe the
directory only when the whole stack is stopped.

``/metrics`` is not for the internet: it answers only clients whose address, and every
address in ``X-Forwarded-For`` (a proxy appends the real client, so a forged header can only
narrow access), lie in ``METRICS_ALLOWED_NETWORKS`` (default loopback and the private
ranges); everyone else gets 403 with ``{"detail", "code"}``. Behind a reverse proxy on the
same host, keep the proxy's ``X-Forwarded-For`` on (our nginx sets it) or block the path there.

Metrics (besides django-prometheus' ``django_http_*`` request metrics):

- ``vending_vends_total{outcome}``: vends that reached a final state (succeeded, failed,
  expired, cancelled); each vend counts once.
- ``vending_vends_unconfirmed_total``: vends that became ``unconfirmed`` (no confirmation in
  time); they count again under their final outcome if staff or a late confirmation settle them.
- ``vending_vend_duration_seconds{outcome}``: time from the request (``created_at``) to the
  final state.
- ``vending_device_polls_total{dialect}``: device polls; ``rate()`` of it is polls per second.
- ``vending_polls_shed_total{dialect,reason}``: polls answered idle at once because the
  server was overloaded (``devices.api.shed_poll``); not counted in the polls above.
- ``vending_devices_online``, ``vending_command_queue_depth{state}``,
  ``vending_unconfirmed_vends``: computed at scrape time.
- ``vending_notify_deliveries_total{outcome}``, ``vending_notify_delivery_seconds`` and
  ``vending_notify_queue_depth``: the notifier's (:mod:`vending_site.notify.metrics`).
"""

from __future__ import annotations

import bisect
import glob
import ipaddress
import os
import threading
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from vending_site.observability import metrics_files
from vending_site.observability.logging import get_logger
from vending_site.observability.ticker import Ticker

VENDS = Counter("vending_vends_total", "Vends that reached a final state, by outcome.", ["outcome"])
VENDS_UNCONFIRMED = Counter(
    "vending_vends_unconfirmed_total",
    "Vends that got no confirmation in time and were marked unconfirmed.",
)
VEND_DURATION = Histogram(
    "vending_vend_duration_seconds",
    "Seconds from the vend request to its final state, by outcome.",
    ["outcome"],
    buckets=(0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 900, 3600),
)
DEVICE_POLLS = Counter(
    "vending_device_polls_total", "Polls by WiFi devices, by firmware dialect.", ["dialect"]
)
POLLS_SHED = Counter(
    "vending_polls_shed_total",
    "Device polls answered idle at once, unexamined, because the server was overloaded "
    "(late: the poll had waited past DEVICE_POLL_SHED_AFTER; queue: it would have).",
    ["dialect", "reason"],
)
SHED_REASONS = ("late", "queue")

logger = get_logger(__name__)

# --- Recording (called by the lifecycle and the poll views) -------------------------------


def record_vend_outcome(*, outcome: str, requested_at: datetime, settled_at: datetime) -> None:
    VENDS.labels(outcome=outcome).inc()
    VEND_DURATION.labels(outcome=outcome).observe(
        max((settled_at - requested_at).total_seconds(), 0.0)
    )


def record_unconfirmed() -> None:
    VENDS_UNCONFIRMED.inc()


def record_poll(*, dialect: str) -> None:
    """Count a poll. The poll answers within the firmware's 2 s whatever happens here: a
    metrics file that cannot be written (disk full, permissions) costs the count only."""
    try:
        DEVICE_POLLS.labels(dialect=dialect).inc()
    except OSError:
        logger.warning("metrics_write_failed", metric="vending_device_polls_total", exc_info=True)


def poll_counter(*, dialect: str):
    """The poll counter's child for ``dialect`` (to count through a :class:`Tally`)."""
    return DEVICE_POLLS.labels(dialect=dialect)


def shed_counter(*, dialect: str, reason: str):
    """The shed-poll counter's child (to count through a :class:`Tally`). Made for every
    dialect and reason when the shedding module loads, so ``/metrics`` shows them at 0."""
    return POLLS_SHED.labels(dialect=dialect, reason=reason)


class ViewRequestMetrics:
    """django-prometheus' request metrics (``django_http_*``) for requests to one view that
    are answered outside Django's middleware chain (the device poll's shortcut,
    ``devices.api.poll_shortcut``): the same series, with the same labels, that
    ``PrometheusBeforeMiddleware`` and ``PrometheusAfterMiddleware`` write for such a
    request, so a dashboard sees no difference. The labelled children are looked up once
    per label set (``labels()`` was most of the middlewares' cost)."""

    def __init__(self, *, view: str, method: str = "GET") -> None:
        from django_prometheus.middleware import Metrics

        self.metrics = Metrics.get_instance()
        self.view, self.method = view, method
        self._children: dict[tuple, tuple] = {}

    def _bound(self, transport: str, status: str, charset: str) -> tuple:
        key = (transport, status, charset)
        found = self._children.get(key)
        if found is None:
            m, view, method = self.metrics, self.view, self.method
            found = self._children[key] = (
                m.requests_by_method.labels(method=method),
                m.requests_by_transport.labels(transport=transport),
                m.requests_by_view_transport_method.labels(
                    view=view, transport=transport, method=method
                ),
                m.responses_by_status.labels(status=status),
                m.responses_by_status_view_method.labels(status=status, view=view, method=method),
                m.responses_by_charset.labels(charset=charset),
                m.requests_latency_by_view_method.labels(view=view, method=method),
            )
        return found

    def record(
        self,
        *,
        secure: bool,
        status: int,
        charset: str,
        request_bytes: int,
        response_bytes: int,
        seconds: float,
        ajax: bool = False,
        tally: Tally | None = None,
    ) -> None:
        """One request answered; never lets a metrics file error fail the answer. With a
        ``tally``, written by its thread a moment later instead of now."""
        try:
            by_method, by_transport, by_view, by_status, by_status_view, by_charset, latency = (
                self._bound("https" if secure else "http", str(status), charset)
            )
        except OSError:
            logger.warning("metrics_write_failed", metric="django_http_*", exc_info=True)
            return
        m = self.metrics
        counted = [m.requests_total, by_method, by_transport, by_view, by_status]
        counted += [by_status_view, by_charset, m.responses_total]
        if ajax:
            counted.append(m.requests_ajax)
        observed = [
            (m.requests_body_bytes, request_bytes),
            (m.responses_body_bytes, response_bytes),
            (latency, seconds),
            (m.requests_latency_before, seconds),
        ]
        if tally is not None:
            tally.add(counted, observed)
            return
        try:
            for child in counted:
                child.inc()
            for child, value in observed:
                child.observe(value)
        except OSError:
            logger.warning("metrics_write_failed", metric="django_http_*", exc_info=True)


class Tally:
    """Counter increments and histogram observations of a hot path (the idle poll answered
    from memory, ``devices.api.kept_poll``), summed in this process's memory and written to
    the metric files every :data:`TALLY_SECONDS` by a thread of its own.

    In multiprocess mode every ``inc`` and ``observe`` writes a memory-mapped file (with a
    ``getpid()`` and a lock): the 17 writes of one request were a third of an idle poll's
    CPU (``bench/poll_profile.py``). Summed here, a flush writes each series once. A scrape
    sees them at most that much later; a process killed without its exit loses at most that
    much. Histograms are summed per bucket, as ``Histogram.observe`` files an observation:
    into the first bucket whose upper bound is at least the value, and into the sum.
    """

    def __init__(self) -> None:
        self._fresh_process()
        self.ticker = Ticker("metrics-flush", TALLY_SECONDS, self.flush)
        os.register_at_fork(after_in_child=self._fresh_process)

    def _fresh_process(self) -> None:
        """Nothing tallied yet (the parent writes its own) and a lock nobody holds."""
        self._lock = threading.Lock()
        self._counts: dict[object, float] = {}
        self._observed: dict[object, list[float]] = {}  # child -> [sum, count per bucket...]

    def add(self, counted: list, observed: list[tuple[object, float]]) -> None:
        """Count each counter child in ``counted`` once and each ``(histogram child,
        value)`` in ``observed``."""
        with self._lock:
            counts = self._counts
            for child in counted:
                counts[child] = counts.get(child, 0) + 1
            for child, value in observed:
                sums = self._observed.get(child)
                if sums is None:
                    sums = self._observed[child] = [0.0] * (len(child._upper_bounds) + 1)
                sums[0] += value
                sums[1 + bisect.bisect_left(child._upper_bounds, value)] += 1
        self.ticker.ensure()

    def flush(self) -> None:
        """Write what was summed since the last flush."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, {}
        try:
            for child, amount in counts.items():
                child.inc(amount)
            for child, sums in observed.items():
                child._sum.inc(sums[0])
                for bucket, count in zip(child._buckets, sums[1:], strict=False):
                    if count:
                        bucket.inc(count)
        except OSError:
            logger.warning("metrics_write_failed", metric="tally", exc_info=True)


TALLY_SECONDS = 0.25
tally = Tally()


# --- Scrape-time facts --------------------------------------------------------------------


SCRAPE_TIME_COLLECTORS: list = []


def register_scrape_time(collector) -> None:
    """Add a collector whose ``collect()`` yields gauges read when Prometheus scrapes (the
    apps register theirs in their ``AppConfig.ready``: ``devices.metrics``,
    ``transactions.metrics``). Registering the same class twice keeps the first."""
    if not any(type(known) is type(collector) for known in SCRAPE_TIME_COLLECTORS):
        SCRAPE_TIME_COLLECTORS.append(collector)


# --- The multiprocess directory -----------------------------------------------------------


def multiproc_dir() -> Path:
    return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.PROMETHEUS_MULTIPROC_DIR)


def compact_dead_processes(directory: Path | None = None) -> int:
    """Fold the files of dead processes into the archive (see
    :func:`vending_site.observability.metrics_files.compact_dead_processes`); this process'
    directory by
    default."""
    return metrics_files.compact_dead_processes(directory or multiproc_dir())


def prepare() -> None:
    """Create the directory and compact it; run once per process, when this module loads."""
    try:
        _networks()
    except ValueError as exc:  # fail at start, not with a 500 on the first scrape
        raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from exc
    directory = multiproc_dir()
    directory.mkdir(parents=True, exist_ok=True)
    compact_dead_processes(directory)
    if values.ValueClass is values.MutexValue:
        # prometheus_client was imported before settings exported the directory: this
        # process' counts would stay in its memory, invisible to /metrics elsewhere.
        logger.warning(
            "metrics_not_shared",
            reason="prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set",
        )


# --- The endpoint -------------------------------------------------------------------------


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOWED_NETWORKS]


def client_allowed(request: HttpRequest) -> bool:
    addresses = [request.META.get("REMOTE_ADDR", "")]
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    addresses += [part.strip() for part in forwarded.split(",") if part.strip()]
    networks = _networks()
    for raw in addresses:
        try:
            address = ipaddress.ip_address(raw.split("%", 1)[0])
        except ValueError:
            return False
        if getattr(address, "ipv4_mapped", None):
            address = address.ipv4_mapped
        if not any(address in net for net in networks):
            return False
    return True


class SharedFilesCollector:
    """Sums the counter/histogram files of every process under ``METRICS_COLLECT_DIR``,
    its subdirectories included.

    On one host every process writes to the one ``PROMETHEUS_MULTIPROC_DIR`` and this reads
    just that. Containers do not share a PID namespace, so each compose service writes to a
    directory of its own on the shared volume (its compaction then only ever judges its own
    processes) and ``/metrics`` sums them all from the volume's root.
    """

    def __init__(self, root: Path):
        self.root = root

    def collect(self):
        files = glob.glob(str(self.root / "**" / "*.db"), recursive=True)
        with metrics_files.compaction_paused(Path(path).parent for path in files):
            # Listed again under the locks: a compaction that ran meanwhile removed files.
            files = glob.glob(str(self.root / "**" / "*.db"), recursive=True)
            return MultiProcessCollector.merge(files, accumulate=True)


def counter_total(name: str) -> float:
    """The counter ``name`` (as declared, e.g. ``vending_polls_shed``) summed over every
    process and label set, as ``/metrics`` would show it: for checks that read a counter
    (the alert rules, ``vending_site.alerts.builtin``). Reads every metric file."""
    root = Path(settings.METRICS_COLLECT_DIR or multiproc_dir())
    total = 0.0
    for family in SharedFilesCollector(root).collect():
        if family.name == name:
            total += sum(s.value for s in family.samples if s.name == f"{name}_total")
    return total


def build_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    root = Path(settings.METRICS_COLLECT_DIR or multiproc_dir())
    registry.register(SharedFilesCollector(root))
    for collector in SCRAPE_TIME_COLLECTORS:
        registry.register(collector)
    return registry


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the Prometheus text format, for allowed networks only."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            {"detail": "Use GET.", "code": "method_not_allowed"},
            status=405,
            headers={"Allow": "GET"},
        )
    if not client_allowed(request):
        return JsonResponse(
            {
                "detail": "Metrics are served only to METRICS_ALLOWED_NETWORKS.",
                "code": "permission_denied",
            },
            status=403,
        )
    try:
        body = generate_latest(build_registry())
    except FileNotFoundError:
        # A directory that appeared between the two listings (a new service's first file).
        body = generate_latest(build_registry())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


prepare()
