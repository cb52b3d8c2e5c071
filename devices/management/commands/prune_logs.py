"""``manage.py prune_logs``: delete old communication log entries and expired idempotency keys,
and the other records that grow without bound (never-approved machines, expired refresh
tokens, login records)."""

from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from devices.maintenance import (
    AGE_FORMS,
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


def tenths_reporter(out) -> Callable[[int, int], None]:
    """A progress callback writing a line each tenth of the way (none for a single batch)."""
    reported = 0

    def report(deleted: int, total: int) -> None:
        nonlocal reported
        tenths = 10 * deleted // total if total else 10
        if reported < tenths < 10:
            reported = tenths
            percent = 100 * deleted // total
            out.write(f"deleted {deleted} of {total} communication log entries ({percent}%)")
            out.flush()

    return report


class Command(BaseCommand):
    help = (
        f"Delete communication log entries older than --older-than ({AGE_FORMS}), in "
        "batches, with progress every tenth of the way, and idempotency keys older than "
        "IDEMPOTENCY_KEY_TTL. Safe to run from cron while the server runs, and to overlap "
        "with itself."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help=f"Delete log entries older than this: {AGE_FORMS}.",
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
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}; write one of {AGE_FORMS}") from None
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
        logs = prune_communication_log(
            before=before,
            batch_size=batch_size,
            time_limit=max_seconds,
            progress=tenths_reporter(self.stdout) if options["verbosity"] >= 1 else None,
        )
        left = old_communication_log(before=before).count() if max_seconds is not None else 0
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
        if left:
            self.stdout.write(
                f"stopped at --max-seconds {max_seconds:g}: {left} communication log entries "
                f"older than {before:%Y-%m-%d %H:%M:%S %Z} are left for the next run"
            )
