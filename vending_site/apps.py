from django.apps import AppConfig


class VendingSiteConfig(AppConfig):
    """The project itself as an app: it owns the live-event outbox and the dashboard socket."""

    name = "vending_site"
    verbose_name = "Vending site"
