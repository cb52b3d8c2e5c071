from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"

    def ready(self) -> None:
        from vending_site.observability.metrics import register_scrape_time

        from .metrics import DevicesCollector

        register_scrape_time(DevicesCollector())
