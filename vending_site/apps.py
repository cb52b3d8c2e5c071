from django.apps import AppConfig


class VendingSiteConfig(AppConfig):
    """The project itself as an app: it owns the live-event outbox and the dashboard socket."""

    name = "vending_site"
    verbose_name = "Vending site"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_migrate

        from vending_site.auth import roles, tokens

        # Every role exists after migrate and after a flush (tests' transactional teardown).
        post_migrate.connect(roles.ensure_roles, sender=self, dispatch_uid="vending-roles")

        from vending_site.notify.metrics import NotifyCollector
        from vending_site.observability.metrics import register_scrape_time

        register_scrape_time(NotifyCollector())  # the outbox's queue depth at /metrics

        tokens.connect_signals()  # a password change or deactivation ends the user's JWTs

        if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
            from vending_site.backends import database

            database.install()  # no request waits forever on PostgreSQL (see database.py)
