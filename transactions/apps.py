from django.apps import AppConfig


class TransactionsConfig(AppConfig):
    name = "transactions"

    def ready(self) -> None:
        from devices.signals import approval_revoked
        from vending_site.observability.metrics import register_scrape_time

        from . import alert_rules
        from .commands import expire_commands_of_revoked_machines
        from .metrics import VendsCollector

        approval_revoked.connect(
            expire_commands_of_revoked_machines, dispatch_uid="transactions.revoked"
        )
        register_scrape_time(VendsCollector())
        alert_rules.register_rules()
