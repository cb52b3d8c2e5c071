"""The project's own admin screens, found by the admin's autodiscovery (``<app>.admin``)."""

from vending_site.alerts import admin as _alerts  # noqa: F401 - registers its models
from vending_site.notify import admin as _notify  # noqa: F401 - registers its models
