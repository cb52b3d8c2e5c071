from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .choices import (
    SUPPORTED_COMMANDS,
    CommandKind,
    CommandState,
    Direction,
    LogLevel,
    PortRequest,
    Protocol,
    Transport,
)

MAX_SLOTS = 64


def approved_by_default() -> bool:
    """Kept for migration 0005, which names it; new rows default to approved (see
    ``Device.approved``): a machine that staff, a fixture or the demo creates is admitted by
    whoever created it, and ``services.register_device`` sets a WiFi machine that announces
    itself pending when ``DEVICE_APPROVAL_REQUIRED``."""
    return not settings.DEVICE_APPROVAL_REQUIRED


class Location(models.Model):
    """A site that holds machines: a lobby, a factory floor, a campus building."""

    name = models.CharField(max_length=120, unique=True)
    address = models.TextField(blank=True)
    latitude = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(-90), MaxValueValidator(90)],
    )
    longitude = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(-180), MaxValueValidator(180)],
    )
    contact = models.CharField(
        max_length=200, blank=True, help_text="Who to call on site: a name, a phone number."
    )
    notes = models.TextField(blank=True, help_text="Access codes, opening hours, parking.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(latitude__isnull=True, longitude__isnull=True)
                | Q(latitude__isnull=False, longitude__isnull=False),
                name="location_coordinates_both_or_neither",
            ),
            models.CheckConstraint(
                condition=Q(latitude__isnull=True) | Q(latitude__gte=-90, latitude__lte=90),
                name="location_latitude_in_range",
            ),
            models.CheckConstraint(
                condition=Q(longitude__isnull=True) | Q(longitude__gte=-180, longitude__lte=180),
                name="location_longitude_in_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Route(models.Model):
    """The locations a driver visits, in order (``RouteStop``), to load the machines there."""

    name = models.CharField(max_length=120, unique=True)
    driver = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="routes",
        help_text="Who drives it: a Driver sees only the machines of their routes.",
    )
    notes = models.TextField(blank=True)
    locations = models.ManyToManyField(Location, through="RouteStop", related_name="routes")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RouteStop(models.Model):
    """One location on a route, at its place in the order of visits (1, 2, ...)."""

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="stops")
    location = models.ForeignKey(Location, on_delete=models.CASCADE, related_name="stops")
    position = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["route", "position"]
        constraints = [
            models.UniqueConstraint(fields=["route", "position"], name="unique_stop_position"),
            models.UniqueConstraint(fields=["route", "location"], name="unique_stop_location"),
            models.CheckConstraint(condition=Q(position__gte=1), name="stop_position_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.route} #{self.position}: {self.location}"


class Device(models.Model):
    """One vending machine's controller, known by the id its firmware sends.

    ``device_id`` is canonical (see ``protocol.normalize_device_id``): the MAC with or
    without colons, in any case, resolves to the same row. Online state is derived from
    ``last_seen``; it is never stored.
    """

    device_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=100, blank=True, help_text="A name for staff.")
    mac_address = models.CharField(max_length=17, blank=True)
    transport = models.CharField(max_length=10, choices=Transport.choices, default=Transport.WIFI)
    protocol = models.CharField(max_length=20, choices=Protocol.choices, default=Protocol.WIFI_V2)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    serial_port = models.CharField(max_length=255, blank=True)
    firmware_version = models.CharField(max_length=50, blank=True)
    slot_count = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(MAX_SLOTS)]
    )
    reported_status = models.CharField(max_length=50, blank=True)
    is_active = models.BooleanField(
        default=False, help_text="The device vends go to when a request names none."
    )
    last_seen = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its serial link was lost (offline until heard again).",
    )
    registered_at = models.DateTimeField(default=timezone.now)
    location = models.ForeignKey(
        Location,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="machines",
        help_text="Where it stands (sales reports, routes and pick lists group by it).",
    )
    approved = models.BooleanField(
        default=True,
        help_text=(
            "With DEVICE_APPROVAL_REQUIRED (the default), a WiFi machine that announces "
            "itself waits for staff approval and receives no commands until then."
        ),
    )
    approved_at = models.DateTimeField(
        null=True, blank=True, help_text="When staff last approved it (empty: never)."
    )
    last_address = models.GenericIPAddressField(
        null=True,
        blank=True,
        help_text="The address its last accepted WiFi request came from, as the server saw it.",
    )
    bound_address = models.GenericIPAddressField(
        null=True,
        blank=True,
        help_text=(
            "With DEVICE_ADDRESS_BINDING (the default), requests for this WiFi machine are "
            "served only from this address (set on approval; empty: the next request's)."
        ),
    )
    moved_to = models.GenericIPAddressField(
        null=True,
        blank=True,
        help_text=(
            "The address that asks to act as this machine and is not bound to it (a new "
            "machine's, or a bound one's new address), awaiting staff; kept while it keeps "
            "asking."
        ),
    )
    moved_at = models.DateTimeField(null=True, blank=True)
    maintenance_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text=(
            "In maintenance until then: its alerts are muted (no new alert opens, open ones "
            "are not reminded of). Empty: not in maintenance."
        ),
    )
    token_hash = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="SHA-256 of the device's X-Device-Token (the token itself is never stored).",
    )

    class Meta:
        permissions = [("operate_device", "Can vend from and send commands to a machine")]
        ordering = ["device_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="single_active_device"
            ),
            models.CheckConstraint(
                condition=Q(slot_count__gte=1) & Q(slot_count__lte=MAX_SLOTS),
                name="device_slot_count_in_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.device_id

    @property
    def is_online(self) -> bool:
        if self.last_seen is None:
            return False
        if self.disconnected_at is not None and self.disconnected_at >= self.last_seen:
            return False
        cutoff = timezone.now() - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER)
        return self.last_seen >= cutoff

    def supports(self, kind: str) -> bool:
        return kind in SUPPORTED_COMMANDS[self.protocol]

    @property
    def admission(self) -> str:
        """What staff need to know about its admission, in their words."""
        if self.transport == Transport.SERIAL:
            return "linked by USB"
        if self.awaiting_approval:
            return "awaiting approval"
        if self.moved_to:
            return f"moved to {self.moved_to}, awaiting approval"
        if settings.DEVICE_ADDRESS_BINDING and not self.bound_address:
            return "approved, no address bound yet"
        return "approved"

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance_until is not None and self.maintenance_until > timezone.now()

    @property
    def awaiting_approval(self) -> bool:
        """Whether commands are withheld from it: approval is required and it has none. A
        device on a USB serial link needs none (its cable is in this server)."""
        return (
            settings.DEVICE_APPROVAL_REQUIRED
            and not self.approved
            and self.transport != Transport.SERIAL
        )


class Command(models.Model):
    """One instruction for one device, delivered at most once."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="commands")
    kind = models.CharField(max_length=10, choices=CommandKind.choices)
    slot = models.PositiveSmallIntegerField(null=True, blank=True)
    state = models.CharField(
        max_length=10, choices=CommandState.choices, default=CommandState.QUEUED
    )
    transaction = models.OneToOneField(
        "transactions.Transaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="command",
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["device", "state", "created_at"], name="command_device_queue"),
            models.Index(fields=["state", "expires_at"], name="command_state_expiry"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind=CommandKind.VEND) | Q(slot__isnull=False),
                name="vend_command_has_slot",
            ),
        ]

    def __str__(self) -> str:
        target = f":{self.slot}" if self.slot else ""
        return f"{self.kind}{target} → {self.device.device_id} ({self.state})"

    def as_wire(self) -> dict:
        """The JSON object the WiFi firmware receives (extra keys are ignored by it)."""
        body: dict = {"command": self.kind, "command_id": self.pk}
        if self.slot is not None:
            body["slot"] = self.slot
        if self.transaction_id is not None:
            body["transaction_id"] = str(self.transaction_id)
        return body


class CommunicationLog(models.Model):
    """Every exchange with a device, as it crossed the wire."""

    device = models.ForeignKey(
        Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="log_entries"
    )
    device_key = models.CharField(
        max_length=64, blank=True, help_text="The id as the device sent it."
    )
    direction = models.CharField(max_length=3, choices=Direction.choices)
    transport = models.CharField(max_length=10, choices=Transport.choices)
    endpoint = models.CharField(max_length=100, blank=True)
    message = models.TextField()
    level = models.CharField(max_length=10, choices=LogLevel.choices, default=LogLevel.INFO)
    remote_addr = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["device", "-created_at"], name="commlog_device_time")]
        verbose_name = "communication log entry"
        verbose_name_plural = "communication log"

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.device_key}: {self.message[:60]}"


class SerialPort(models.Model):
    """A serial port as the bridge last saw it, and what staff want done with it."""

    path = models.CharField(max_length=255, unique=True)
    vid = models.PositiveIntegerField("USB vendor id", null=True, blank=True)
    pid = models.PositiveIntegerField("USB product id", null=True, blank=True)
    description = models.CharField(max_length=255, blank=True)
    likely_esp32 = models.BooleanField(default=False)
    present = models.BooleanField(default=True, help_text="Seen at the bridge's last scan.")
    is_open = models.BooleanField(default=False)
    device = models.ForeignKey(
        Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="serial_ports"
    )
    requested = models.CharField(
        max_length=10, choices=PortRequest.choices, default=PortRequest.AUTO
    )
    last_error = models.CharField(max_length=255, blank=True)
    reported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["path"]

    def __str__(self) -> str:
        return self.path

    @property
    def usb_id(self) -> str:
        if self.vid is None or self.pid is None:
            return ""
        return f"{self.vid:04X}:{self.pid:04X}"

    def wanted_open(self, explicit: bool) -> bool:
        """Whether the bridge should hold this port open."""
        if self.requested == PortRequest.CONNECT:
            return True
        if self.requested == PortRequest.DISCONNECT:
            return False
        return explicit or self.likely_esp32
