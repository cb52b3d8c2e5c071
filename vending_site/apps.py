from django.apps import AppConfig


class VendingSiteConfig(AppConfig):
    """The project itself as an app: it owns the live-event outbox and the dashboard socket."""

    name = "vending_site"
    verbose_name = "Vending site"

    def import_models(self) -> None:
        super().import_models()
        # The models of the subpackages, registered under this app (see models.py).
        from vending_site.alerts import models as _alerts  # noqa: F401
        from vending_site.notify import models as _notify  # noqa: F401

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_migrate

        from vending_site.alerts import builtin, evaluation
        from vending_site.alerts.metrics import AlertsCollector
        from vending_site.auth import roles, tokens
        from vending_site.observability.metrics import register_scrape_time

        # Every role exists after migrate and after a flush (tests' transactional teardown).
        post_migrate.connect(roles.ensure_roles, sender=self, dispatch_uid="vending-roles")
        # Every registered alert rule has its row (the apps registered theirs in their
        # ready(), which all ran before any post_migrate).
        builtin.register_rules()
        post_migrate.connect(
            evaluation.ensure_rules, sender=self, dispatch_uid="vending-alert-rules"
        )
        register_scrape_time(AlertsCollector())

        from vending_site.alerts.registry import rules
        from vending_site.notify.metrics import NotifyCollector
        from vending_site.notify.scopes import register_scope_choices

        register_scrape_time(NotifyCollector())  # the outbox's queue depth at /metrics
        # A channel may keep to some alert rules: those registered, by name.
        register_scope_choices("rule", lambda: [(key, spec.name) for key, spec in rules().items()])

        tokens.connect_signals()  # a password change or deactivation ends the user's JWTs

        if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
            from vending_site.backends import database

            database.install()  # no request waits forever on PostgreSQL (see database.py)
