import pytest
from django.db import transaction

from vending_site.notify.events import EVENT_TYPES, emit
from vending_site.notify.models import Delivery, Endpoint, Message

pytestmark = pytest.mark.django_db(transaction=True)


def endpoint(name="erp", **fields):
    fields.setdefault("url", "https://erp.example/hooks")
    fields.setdefault("event_types", ["vend.succeeded"])
    return Endpoint.objects.create(name=name, **fields)


def test_an_event_nobody_takes_writes_nothing():
    endpoint(event_types=["vend.failed"])

    assert emit("vend.succeeded", {"id": "1"}, subject="vend:1") is None

    assert not Message.objects.exists() and not Delivery.objects.exists()


def test_an_event_becomes_one_message_and_one_delivery_per_subscribed_endpoint():
    erp, shop = endpoint("erp"), endpoint("shop")
    endpoint("paused", is_active=False)

    message = emit("vend.succeeded", {"id": "1"}, subject="vend:1")

    assert message.msg_id.startswith("msg_")
    assert message.body() == {
        "type": "vend.succeeded",
        "timestamp": message.created_at.isoformat(),
        "data": {"id": "1"},
    }
    assert set(Delivery.objects.values_list("endpoint", "state")) == {
        (erp.pk, "pending"),
        (shop.pk, "pending"),
    }


def test_the_outbox_rolls_back_with_the_change_that_emitted():
    endpoint()

    with pytest.raises(RuntimeError), transaction.atomic():
        emit("vend.succeeded", {"id": "1"}, subject="vend:1")
        raise RuntimeError("the vend's transaction failed")

    assert not Message.objects.exists() and not Delivery.objects.exists()


@pytest.mark.parametrize(
    ("filters", "tags", "taken"),
    [
        ({"location": ["3"]}, {"location": 3}, True),
        ({"location": ["3"]}, {"location": 4}, False),
        ({"location": ["3"]}, {}, False),
        ({"route": ["1", "2"]}, {"route": [2, 7]}, True),
        ({"route": []}, {}, True),
        ({"rule": ["offline"], "location": ["3"]}, {"rule": "offline", "location": "4"}, False),
    ],
)
def test_filters_pass_only_events_whose_tags_match(filters, tags, taken):
    endpoint(filters=filters)

    assert (emit("vend.succeeded", {}, tags=tags) is not None) is taken


def test_an_unknown_event_type_is_a_programming_error():
    with pytest.raises(ValueError, match=r"vend\.exploded"):
        emit("vend.exploded", {})


def test_every_endpoint_gets_a_standard_webhooks_secret_of_its_own():
    a, b = endpoint("a"), endpoint("b")

    assert a.secret.startswith("whsec_") and a.secret != b.secret
    assert "vend.succeeded" in EVENT_TYPES
