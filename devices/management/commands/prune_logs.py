"""``manage.py prune_logs``: delete old communication log entries and expired idempotency keys,
and the other records that grow without bound (never-approved machines, expired refresh
tokens, login records)."""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from devices.maintenance import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    old_communication_log,
    parse_age,
    prune_communication_log,
    prune_pending_devices,
)
from transactions.selectors import expired_idempotency_keys
from transactions.services import prune_idempotency_keys
from vending_site.auth.logins import prune_login_records
from vending_site.auth.tokens import prune_expired_tokens
from vending_site.live.events import prune_live_events


class Command(BaseCommand):
    help = (
        "Delete communication log entries older than --older-than (30d, 12h, 90m, 3600s), in "
        "batches, and idempotency keys older than IDEMPOTENCY_KEY_TTL. Safe to run from cron "
        "while the server runs, and to overlap with itself."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help="Delete log entries older than this: 30d, 12h, 90m or 3600s.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows per delete statement (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--max-seconds",
            type=float,
            default=None,
            help="Start no new batch after this many seconds; the rest waits for the next run.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count only; delete nothing.")

    def handle(self, *args, older_than, batch_size, max_seconds, dry_run, **options):
        try:
            age = parse_age(older_than)
        except ValueError:
            raise CommandError("--older-than must look like 30d, 12h, 90m or 3600s") from None
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise CommandError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
        if max_seconds is not None and max_seconds <= 0:
            raise CommandError("--max-seconds must be positive")
        before = timezone.now() - age
        if dry_run:
            logs = old_communication_log(before=before).count()
            keys = expired_idempotency_keys().count()
            self.stdout.write(
                f"dry run: would delete {logs} communication log entries older than "
                f"{before:%Y-%m-%d %H:%M:%S %Z} and {keys} expired idempotency keys"
            )
            return
        logs = prune_communication_log(before=before, batch_size=batch_size, time_limit=max_seconds)
        keys = prune_idempotency_keys()
        events = prune_live_events()
        machines = prune_pending_devices()
        tokens = prune_expired_tokens()
        logins = prune_login_records(before=before)
        self.stdout.write(
            f"deleted {logs} communication log entries older than "
            f"{before:%Y-%m-%d %H:%M:%S %Z} and {keys} expired idempotency keys "
            f"({events} live events past LIVE_EVENT_RETENTION, {machines} machines never "
            f"approved, {tokens} expired refresh tokens, {logins} login records older than "
            "that)"
        )
