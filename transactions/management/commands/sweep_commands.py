"""``manage.py sweep_commands``: expire undelivered vends and flag unconfirmed ones (cron)."""

from django.core.management.base import BaseCommand

from transactions.services import sweep


class Command(BaseCommand):
    help = (
        "Expire commands not delivered within VEND_QUEUE_TTL (returning their units) and mark "
        "vends with no confirmation within VEND_CONFIRM_TIMEOUT as unconfirmed. Safe to run "
        "from cron while the server runs, and to overlap with itself."
    )

    def handle(self, *args, **options):
        total = {"expired": 0, "unconfirmed": 0}
        while True:  # sweep() handles up to 500 of each per call
            result = sweep()
            total["expired"] += result.expired
            total["unconfirmed"] += result.unconfirmed
            if result.expired < 500 and result.unconfirmed < 500:
                break
        self.stdout.write(f"expired {total['expired']}, unconfirmed {total['unconfirmed']}")
