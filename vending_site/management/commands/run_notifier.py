"""``manage.py run_notifier``: send the outbox (webhooks, e-mail, Apprise) until stopped."""

import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vending_site.notify.outbox import prune_delivered
from vending_site.notify.worker import Notifier
from vending_site.processes.heartbeat import NOTIFIER, Heartbeat
from vending_site.processes.shutdown import stop_on_signals

PRUNE_EVERY = 300.0  # seconds between deletions of delivered messages past retention


def run_alert_checks() -> None:
    """Evaluate the alert rules (``vending_site.alerts.evaluation.run_checks``), when the
    alerts module is installed."""
    try:
        from vending_site.alerts.evaluation import run_checks
    except ImportError:
        return
    run_checks()


def periodic_tasks() -> None:
    """What the notifier runs every ``ALERT_CHECK_SECONDS`` beside sending."""
    run_alert_checks()


def prune_messages() -> None:
    prune_delivered()


class Command(BaseCommand):
    help = (
        "Send pending webhook, e-mail and Apprise deliveries, retrying failures with backoff, "
        "and run the alert checks every ALERT_CHECK_SECONDS. Runs until SIGINT/SIGTERM; "
        "several may run at once (a delivery is claimed by one). --once sends what is due "
        "and exits."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Send what is due, then exit.")
        parser.add_argument(
            "--workers", type=int, default=None, help="Sending threads (NOTIFY_WORKERS)."
        )

    def handle(self, *args, once: bool, workers: int | None, **options):
        if workers is not None and workers < 1:
            raise CommandError("--workers must be at least 1")
        if once:
            notifier = Notifier(workers=workers)
            claimed = notifier.run_once()
            self.stdout.write(f"sent {claimed}")
            return
        notifier = Notifier(
            workers=workers,
            periodic=[
                (settings.ALERT_CHECK_SECONDS, periodic_tasks),
                (PRUNE_EVERY, prune_messages),
            ],
        )
        stop = threading.Event()
        stop_on_signals(stop)
        self.stdout.write(
            f"notifier {notifier.name}: {notifier.workers} threads, "
            f"{notifier.per_endpoint} per endpoint"
        )
        self.stdout.flush()
        heartbeat = Heartbeat(NOTIFIER, detail={"workers": notifier.workers}).start()
        try:
            notifier.run(stop)
        finally:
            heartbeat.stop()
        self.stdout.write("notifier stopped")
