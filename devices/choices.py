"""Choice sets of the devices app."""

from django.db import models


class Transport(models.TextChoices):
    WIFI = "wifi", "WiFi"
    SERIAL = "serial", "USB serial"


class Protocol(models.TextChoices):
    """Which firmware dialect a device speaks; it decides which commands it can run."""

    WIFI_V2 = "wifi_v2", "WiFi firmware v2.1 (/esp32/commands)"
    WIFI_DOCUMENTED = "wifi_documented", "WiFi documented variant (/esp32/wifi/...)"
    SERIAL = "serial", "USB serial firmware"


class CommandKind(models.TextChoices):
    VEND = "VEND", "Vend"
    STATUS = "STATUS", "Status"
    RESET = "RESET", "Reset"


class CommandState(models.TextChoices):
    """Delivery state of a command; a vend's outcome lives on its Transaction."""

    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    COMPLETED = "completed", "Completed"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


class PortRequest(models.TextChoices):
    """What staff asked the serial bridge to do with a port."""

    AUTO = "auto", "Automatic (connect ESP32 boards)"
    CONNECT = "connect", "Connect"
    DISCONNECT = "disconnect", "Disconnect"


class Direction(models.TextChoices):
    IN = "in", "Device → server"
    OUT = "out", "Server → device"


class LogLevel(models.TextChoices):
    DEBUG = "debug", "Debug"
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"


# The commands each dialect acts on (PROTOCOL.md): v2.1 ignores all but VEND.
SUPPORTED_COMMANDS: dict[str, frozenset[str]] = {
    Protocol.WIFI_V2: frozenset({CommandKind.VEND}),
    Protocol.WIFI_DOCUMENTED: frozenset({CommandKind.VEND, CommandKind.STATUS, CommandKind.RESET}),
    Protocol.SERIAL: frozenset({CommandKind.VEND, CommandKind.STATUS, CommandKind.RESET}),
}

# The highest slot number each dialect acts on (PROTOCOL.md: VEND with slot 1..5); the
# documented WiFi variant sets no limit beyond the machine's own slot count.
FIRMWARE_MAX_SLOT: dict[str, int] = {Protocol.WIFI_V2: 5, Protocol.SERIAL: 5}
