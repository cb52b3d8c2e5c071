"""``manage.py sweep_commands``: expire undelivered vends and flag unconfirmed ones."""

import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

from devices.maintenance import prune_pending_devices
from transactions.services import sweep
from vending_site.live.events import prune_live_events
from vending_site.processes.heartbeat import SWEEPER, Heartbeat
from vending_site.processes.shutdown import stop_on_signals

BATCH = 500  # sweep() handles up to this many of each kind per call
PRUNE_EVERY = 60.0  # seconds between looks for never-approved machines to delete


class Command(BaseCommand):
    help = (
        "Expire commands not delivered within VEND_QUEUE_TTL (returning their units) and mark "
        "vends with no confirmation within VEND_CONFIRM_TIMEOUT as unconfirmed. Runs once (for "
        "cron), or with --every N as a process of its own (make run starts one). Safe beside "
        "every other process and beside itself."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--every",
            type=float,
            default=0,
            help="Keep running, sweeping every this many seconds, until SIGINT/SIGTERM.",
        )

    def handle(self, *args, every: float, **options):
        if every < 0:
            raise CommandError("--every must be a positive number of seconds")
        if not every:
            expired, unconfirmed = self.sweep_all()
            self.stdout.write(f"expired {expired}, unconfirmed {unconfirmed}")
            return
        stop = threading.Event()
        stop_on_signals(stop)
        self.stdout.write(f"sweeping every {every:g} s")
        self.stdout.flush()
        heartbeat = Heartbeat(SWEEPER, detail={"every": every}).start()
        try:
            self.sweep_until(stop, every)
        finally:
            heartbeat.stop()
        self.stdout.write("sweeper stopped")

    def sweep_until(self, stop: threading.Event, every: float) -> None:
        prune_due = time.monotonic()
        while not stop.is_set():
            try:
                expired, unconfirmed = self.sweep_all()
                # Inside the try too: the server may go away between the two.
                prune_live_events()
                if time.monotonic() >= prune_due:  # hours-old machines: once a minute is plenty
                    prune_pending_devices()
                    prune_due = time.monotonic() + PRUNE_EVERY
            except DatabaseError as exc:  # the database restarts: try again next round
                self.stderr.write(f"sweep failed: {exc}")
                connection.close()
            else:
                if expired or unconfirmed:
                    self.stdout.write(f"expired {expired}, unconfirmed {unconfirmed}")
                    self.stdout.flush()
            stop.wait(every)

    @staticmethod
    def sweep_all() -> tuple[int, int]:
        expired = unconfirmed = 0
        while True:
            result = sweep()
            expired += result.expired
            unconfirmed += result.unconfirmed
            if result.expired < BATCH and result.unconfirmed < BATCH:
                return expired, unconfirmed
