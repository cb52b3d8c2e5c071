"""``manage.py bootstrap``: first-run setup used by `make run` (idempotent)."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from inventory.demo import demo_data_needed, load_demo_data, load_demo_fleet
from transactions.demo import HISTORY_DAYS, load_demo_history


class Command(BaseCommand):
    help = (
        "Ensure a staff account exists (ADMIN_USERNAME; password ADMIN_PASSWORD, or a random one "
        "printed once and kept in DATA_DIR/admin-password.txt) and load the demo machine into "
        "an empty database."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-demo", action="store_true", help="Do not load demo data.")
        parser.add_argument(
            "--demo-fleet",
            action="store_true",
            help=(
                "Also ensure the simulated machines of `make demo`, with stock, and load a "
                "month of history (two locations, a route and its driver; once)."
            ),
        )

    def handle(self, *args, no_demo: bool, demo_fleet: bool, **options):
        self.ensure_staff_user()
        if not no_demo and demo_data_needed():
            device = load_demo_data()
            self.stdout.write(f"Loaded demo data: machine {device.device_id} with 5 slots.")
        if demo_fleet:
            history = load_demo_history()  # before the fleet's stock: it writes the ledgers
            fleet = load_demo_fleet()
            self.stdout.write(f"Demo fleet: {', '.join(d.device_id for d in fleet)}.")
            self.report_history(history)

    def report_history(self, history) -> None:
        if history.loaded:
            self.stdout.write(
                f"Demo history: {history.vends} vends ({history.failed} failed) on "
                f"{history.days} of the last {HISTORY_DAYS} days and {history.restocks} slot "
                f"restocks, at {' and '.join(history.locations)} on {history.route!r}."
            )
        else:
            self.stdout.write("Demo history: already loaded.")
        if history.driver_password:
            path = settings.DATA_DIR / "driver-password.txt"
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created demo driver {history.driver!r} (Driver role) with password "
                    f"{history.driver_password!r} (also saved in {path})."
                )
            )

    def ensure_staff_user(self) -> None:
        User = get_user_model()
        username, password = settings.ADMIN_USERNAME, settings.ADMIN_PASSWORD
        user = User.objects.filter(username=username).first()
        if user is not None:
            if password and not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write(f"Staff user {username!r}: password set from ADMIN_PASSWORD.")
            return
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(username, settings.ADMIN_EMAIL, password)
        if generated:
            path = settings.DATA_DIR / "admin-password.txt"
            path.write_text(password + "\n")
            path.chmod(0o600)
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created staff user {username!r} with password {password!r} "
                    f"(also saved in {path})."
                )
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Created staff user {username!r}."))
