"""``manage.py create_api_key --name NAME``: an API key for a machine-to-machine client."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from rest_framework_api_key.models import APIKey


class Command(BaseCommand):
    help = (
        "Create a vend-client API key and print it once (only a hash is stored). Clients send "
        "it as 'Authorization: Api-Key <key>'. Revoke it in the admin (API Key Permissions)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="Who or what the key is for.")
        parser.add_argument(
            "--expires-days", type=int, default=None, help="Expire after this many days."
        )

    def handle(self, *args, name: str, expires_days: int | None, **options) -> None:
        name = name.strip()
        if not name or len(name) > 50:
            raise CommandError("--name must be 1 to 50 characters.")
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1.")
        expiry = timezone.now() + timedelta(days=expires_days) if expires_days else None
        api_key, key = APIKey.objects.create_key(name=name, expiry_date=expiry)
        self.stdout.write(key)
        self.stderr.write(
            f"API key {api_key.prefix} ({name}): store it now; it cannot be shown again."
        )
