"""The admin's notification screens: endpoints checked per kind, records read-only, replay."""

import pytest
from django.test import Client

from tests.factories import staff_with_role
from vending_site.auth import roles
from vending_site.notify.events import emit
from vending_site.notify.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

ADD = "/admin/vending_site/endpoint/add/"


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(staff_with_role(roles.OPERATOR))
    return client


def add(client, **fields):
    form = {"name": "n", "kind": "webhook", "url": "", "recipients": ""}
    form.update(fields)
    form.setdefault("event_types", ["vend.succeeded"])
    form.setdefault("is_active", "on")
    return client.post(ADD, form)


def test_a_webhook_to_a_metadata_address_is_refused_with_the_reason(operator):
    answer = add(operator, url="http://169.254.169.254/latest/")

    assert answer.status_code == 200  # the form again, with its error
    assert "cloud metadata address" in answer.content.decode()
    assert not Endpoint.objects.exists()


def test_a_webhook_inside_the_allowed_networks_is_saved_with_its_event_types(operator, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]

    answer = add(operator, url="http://127.0.0.1:9/h", event_types=["stock.low", "stock.empty"])

    assert answer.status_code == 302
    endpoint = Endpoint.objects.get()
    assert endpoint.event_types == ["stock.low", "stock.empty"]
    assert endpoint.secret.startswith("whsec_") and endpoint.created_by is not None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"kind": "email", "recipients": "ops@example.org, not-an-address"}, "not an e-mail"),
        ({"kind": "email", "recipients": ""}, "at least one e-mail"),
        ({"kind": "apprise", "url": "nonsense://"}, "Apprise does not recognise"),
    ],
)
def test_people_channels_are_checked_per_kind(operator, fields, says):
    answer = add(operator, **fields)

    assert answer.status_code == 200 and says in answer.content.decode()
    assert not Endpoint.objects.exists()


def test_an_apprise_url_apprise_understands_is_saved(operator):
    assert add(operator, kind="apprise", url="ntfy://ntfy.example.org/vending").status_code == 302


def test_the_replay_action_queues_a_failed_delivery_again(operator):
    Endpoint.objects.create(name="erp", url="http://x.example/", event_types=["vend.failed"])
    emit("vend.failed", {"id": "1"}, subject="vend:1")
    Delivery.objects.update(state="failed", attempts=8)
    delivery = Delivery.objects.get()

    answer = operator.post(
        "/admin/vending_site/delivery/",
        {"action": "replay", "_selected_action": [delivery.pk]},
    )

    assert answer.status_code == 302
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 0)


def test_the_lists_show_for_an_operator_and_not_for_a_viewer(operator):
    Endpoint.objects.create(name="erp", url="http://x.example/", event_types=["vend.failed"])
    emit("vend.failed", {"id": "1"}, subject="vend:1")
    viewer = Client()
    viewer.force_login(staff_with_role(roles.VIEWER))
    for page in ("endpoint", "message", "delivery"):
        url = f"/admin/vending_site/{page}/"
        assert operator.get(url).status_code == 200, page
        assert viewer.get(url).status_code == 403, page
    assert (
        operator.get(
            f"/admin/vending_site/delivery/{Delivery.objects.get().pk}/change/"
        ).status_code
        == 200
    )


def test_a_webhook_secret_is_shown_once_when_added_or_rotated_never_on_its_page(operator, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    added = add(operator, url="http://127.0.0.1:9/h", name="erp")
    endpoint = Endpoint.objects.get()
    page = f"/admin/vending_site/endpoint/{endpoint.pk}/change/"

    assert endpoint.secret in operator.get(added.url).content.decode()  # the page after adding
    assert endpoint.secret not in operator.get(page).content.decode()
    rotated = operator.post(
        "/admin/vending_site/endpoint/",
        {"action": "rotate_secrets", "_selected_action": [endpoint.pk]},
        follow=True,
    )
    endpoint.refresh_from_db()
    assert endpoint.secret in rotated.content.decode()
    assert endpoint.secret not in operator.get(page).content.decode()


def test_a_channel_is_narrowed_to_rules_locations_and_routes_picked_from_lists(operator):
    from devices.models import Location, Route

    lobby = Location.objects.create(name="Lobby")
    Location.objects.create(name="Depot")
    morning = Route.objects.create(name="Morning")
    page = operator.get(ADD).content.decode()
    assert "Lobby" in page and "Depot" in page and "Morning" in page
    assert "Machine offline" in page  # the alert rules, by name

    answer = add(
        operator,
        kind="email",
        recipients="ops@example.org",
        event_types=["alert.opened"],
        scope_rule=["machine_offline", "slot_empty"],
        scope_location=[str(lobby.pk)],
        scope_route=[str(morning.pk)],
    )

    assert answer.status_code == 302, answer.content.decode()[:2000]
    channel = Endpoint.objects.get()
    assert channel.filters == {
        "rule": ["machine_offline", "slot_empty"],
        "location": [str(lobby.pk)],
        "route": [str(morning.pk)],
    }
    assert channel.accepts(
        "alert.opened", {"rule": "slot_empty", "location": lobby.pk, "route": [morning.pk]}
    )
    assert not channel.accepts(
        "alert.opened", {"rule": "slot_low", "location": lobby.pk, "route": [morning.pk]}
    )


def test_editing_a_channel_shows_its_lists_and_keeps_tags_the_form_does_not_show(operator):
    from devices.models import Location

    lobby = Location.objects.create(name="Lobby")
    channel = Endpoint.objects.create(
        name="staff",
        kind="email",
        recipients="ops@example.org",
        event_types=["alert.opened"],
        filters={"location": [str(lobby.pk)], "device": ["ESP32_000000000001"]},
    )
    change = f"/admin/vending_site/endpoint/{channel.pk}/change/"
    page = operator.get(change).content.decode()
    assert f'value="{lobby.pk}" selected' in page

    answer = operator.post(
        change,
        {
            "name": "staff",
            "kind": "email",
            "url": "",
            "recipients": "ops@example.org",
            "event_types": ["alert.opened"],
            "scope_rule": ["vend_unconfirmed"],
            "is_active": "on",
        },
    )

    assert answer.status_code == 302, answer.content.decode()[:2000]
    channel.refresh_from_db()
    assert channel.filters == {"device": ["ESP32_000000000001"], "rule": ["vend_unconfirmed"]}


def test_an_unknown_choice_is_refused_by_name(operator):
    answer = add(operator, kind="email", recipients="ops@example.org", scope_location=["999999"])

    assert answer.status_code == 200
    assert "999999 is not one of the available choices" in answer.content.decode()
    assert not Endpoint.objects.exists()
