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
    form = {"name": "n", "kind": "webhook", "url": "", "recipients": "", "filters": "{}"}
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
