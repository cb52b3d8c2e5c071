"""The project's own admin screens (Django's autodiscovery imports this module)."""

from vending_site.notify import admin as notify_admin  # noqa: F401 - registers its models
