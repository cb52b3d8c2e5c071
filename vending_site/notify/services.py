"""Endpoints as staff manage them: checks shared by the REST API and the admin, and the
writes (create a webhook, change it, rotate its secret, replay a delivery)."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from . import outbox, ssrf
from .events import EVENT_TYPES
from .models import Delivery, Endpoint, EndpointKind, new_webhook_secret
from .sending import recipients_of

MAX_FILTER_KEYS = 10
MAX_FILTER_VALUES = 100


def check_event_types(events: Any) -> list[str]:
    """The event types, deduplicated in order; ``ValueError`` naming any unknown one."""
    if not isinstance(events, list | tuple) or not events:
        raise ValueError("Give at least one event type, as a list.")
    if not all(isinstance(event, str) for event in events):
        raise ValueError("Event types are strings.")
    unknown = [event for event in events if event not in EVENT_TYPES]
    if unknown:
        names = ", ".join(repr(event[:60]) for event in unknown[:5])
        raise ValueError(f"Unknown event type {names}; known: {', '.join(EVENT_TYPES)}.")
    return list(dict.fromkeys(events))


def check_filters(filters: Any) -> dict[str, list[str]]:
    """Tag filters: ``{"location": ["3"], "route": ["1", "2"]}`` (values as strings)."""
    if filters in (None, ""):
        return {}
    if not isinstance(filters, dict):
        raise ValueError('Filters are an object of lists, e.g. {"location": ["3"]}.')
    if len(filters) > MAX_FILTER_KEYS:
        raise ValueError(f"At most {MAX_FILTER_KEYS} filter keys.")
    clean: dict[str, list[str]] = {}
    for key, values in filters.items():
        if not isinstance(key, str) or not key or len(key) > 40 or "\x00" in key:
            raise ValueError("A filter key is a name of 1 to 40 characters.")
        if not isinstance(values, list) or len(values) > MAX_FILTER_VALUES:
            raise ValueError(f"Filter {key!r} takes a list of at most {MAX_FILTER_VALUES} values.")
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"Filter {key!r} takes strings or integers.")
        if any("\x00" in str(v) for v in values):  # PostgreSQL's jsonb cannot store it
            raise ValueError(f"Filter {key!r} has a value with a NUL character.")
        clean[key] = [str(v)[:100] for v in values]
    return clean


def check_endpoint_target(*, kind: str, url: str, recipients: str) -> None:
    """Refuse (``ValidationError`` on the field at fault) what this kind cannot send to."""
    if kind == EndpointKind.WEBHOOK:
        try:
            ssrf.check_url(url)
        except ssrf.UnsafeURL as exc:
            raise ValidationError({"url": str(exc)}) from None
    elif kind == EndpointKind.APPRISE:
        import apprise

        if not url or not apprise.Apprise().add(url):
            raise ValidationError({"url": "Apprise does not recognise this URL."})
    elif kind == EndpointKind.EMAIL:
        addresses = recipients_of(recipients)
        if not addresses:
            raise ValidationError({"recipients": "Give at least one e-mail address."})
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError(
                    {"recipients": f"{address[:100]!r} is not an e-mail address."}
                ) from None


def default_name(url: str) -> str:
    try:
        return (ssrf.parse(url).hostname or "webhook")[:100]
    except ssrf.UnsafeURL:
        return "webhook"


@transaction.atomic
def create_webhook(
    *, url: str, events: list[str], name: str = "", filters: dict | None = None, user=None
) -> Endpoint:
    """A webhook endpoint; its ``secret`` (shown once) is in the returned object."""
    return Endpoint.objects.create(
        kind=EndpointKind.WEBHOOK,
        name=name or default_name(url),
        url=url,
        event_types=events,
        filters=filters or {},
        created_by=user if user is not None and user.is_authenticated else None,
    )


def update_endpoint(endpoint: Endpoint, *, changes: dict[str, Any]) -> Endpoint:
    """Apply ``changes`` (already checked) and stamp ``updated_at``."""
    for field, value in changes.items():
        setattr(endpoint, field, value)
    endpoint.updated_at = timezone.now()
    endpoint.save(update_fields=[*changes, "updated_at"])
    return endpoint


@transaction.atomic
def delete_endpoint(endpoint: Endpoint) -> None:
    """Delete ``endpoint`` with its deliveries and their tries, even while a notifier sends."""
    outbox.lock_deliveries(Delivery.objects.filter(endpoint=endpoint))
    endpoint.delete()


def rotate_secret(endpoint: Endpoint) -> str:
    """A new signing secret; messages sent from now on are signed with it."""
    secret = new_webhook_secret()
    update_endpoint(endpoint, changes={"secret": secret})
    return secret


def replay_delivery(delivery: Delivery) -> Delivery:
    return outbox.replay(delivery)
