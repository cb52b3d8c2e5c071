"""Shared pieces of the alert tests: subscribed endpoints and the messages they got."""

from vending_site.alerts.models import AlertRule
from vending_site.notify.events import EVENT_TYPES
from vending_site.notify.models import Endpoint, Message


def subscriber(name: str = "ops", events=None, **fields) -> Endpoint:
    fields.setdefault("url", f"https://{name}.example/hooks")
    return Endpoint.objects.create(name=name, event_types=list(events or EVENT_TYPES), **fields)


def messages(event_type: str, subject: str | None = None) -> list[Message]:
    queryset = Message.objects.filter(event_type=event_type).order_by("id")
    if subject is not None:
        queryset = queryset.filter(subject=subject)
    return list(queryset)


def rule(key: str) -> AlertRule:
    return AlertRule.objects.get(key=key)
