from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"

    def ready(self) -> None:
        from vending_site.alerts.registry import register_machine_context
        from vending_site.live.audience import register_machine_scope
        from vending_site.notify.scopes import register_scope_choices
        from vending_site.observability.metrics import register_scrape_time

        from . import alert_rules, poll_cache  # noqa: F401 - poll_cache connects its signals
        from .metrics import DevicesCollector
        from .selectors import live_machine_scope, location_choices, route_choices

        register_scrape_time(DevicesCollector())
        register_machine_scope(live_machine_scope)
        alert_rules.register_rules()
        register_machine_context(alert_rules.machine_context)
        register_scope_choices("location", location_choices)
        register_scope_choices("route", route_choices)
