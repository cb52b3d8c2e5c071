"""``manage.py issue_device_token DEVICE_ID``: a new X-Device-Token for one device."""

from django.core.management.base import BaseCommand, CommandError

from devices.access import issue_device_token
from devices.models import Device
from devices.selectors import canonical_id
from vending_site.http.errors import DomainError


class Command(BaseCommand):
    help = (
        "Issue a new X-Device-Token for a device and print it once (only its SHA-256 is "
        "stored; any earlier token stops working)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("device_id", help="The device id or MAC, as the firmware sends it.")

    def handle(self, *args, device_id: str, **options) -> None:
        try:
            canonical = canonical_id(device_id)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        device = Device.objects.filter(device_id=canonical).first()
        if device is None:
            raise CommandError(f"No device {canonical} is registered.")
        self.stdout.write(issue_device_token(device=device))
        self.stderr.write(
            f"Token for {canonical}: store it in the device now; it cannot be shown again."
        )
