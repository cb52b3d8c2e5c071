"""Webhook subscriptions over REST: create (the secret once), list, read, change, delete,
rotate, deliveries and replay; refused input named; an Operator allowed, a Viewer not."""

import pytest

from tests.factories import UserFactory, staff_with_role
from vending_site.auth import roles
from vending_site.notify.events import emit
from vending_site.notify.models import Delivery, DeliveryAttempt, Endpoint, EndpointKind
from vending_site.notify.outbox import claim_due, record_outcome
from vending_site.notify.sending import Outcome

pytestmark = pytest.mark.django_db

WEBHOOKS = "/api/v1/webhooks/"
HOOK_URL = "http://127.0.0.1:9/hooks"


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture
def operator(client_for):
    return client_for(staff_with_role(roles.OPERATOR))


def subscribe(client, **body):
    body.setdefault("url", HOOK_URL)
    body.setdefault("events", ["vend.succeeded"])
    return client.post(WEBHOOKS, body, format="json")


def test_a_subscription_answers_201_with_its_secret_shown_once(operator):
    created = subscribe(operator, events=["vend.succeeded", "vend.failed"], name="ERP")

    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["events"] == ["vend.succeeded", "vend.failed"] and body["name"] == "ERP"
    assert Endpoint.objects.get().kind == EndpointKind.WEBHOOK
    listed = operator.get(WEBHOOKS).json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    assert "secret" not in operator.get(f"{WEBHOOKS}{body['id']}/").json()


def test_an_unknown_event_type_is_400_naming_it(operator):
    answer = subscribe(operator, events=["vend.succeeded", "vend.exploded"])

    assert answer.status_code == 400
    assert "vend.exploded" in answer.json()["detail"]
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.org/hooks", "Only http:// and https://"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.5/hooks", "private address"),
        ("not a url", "spaces"),
        # 6to4 (2002::/16) carries an IPv4 address inside: a relay delivers it there.
        ("http://[2002:a9fe:a9fe::1]/hooks", "cloud metadata"),
        ("http://[2002:a00:5::]/hooks", "private address"),
    ],
)
def test_a_refused_url_is_400_naming_the_problem(operator, url, says):
    answer = subscribe(operator, url=url)

    assert answer.status_code == 400
    assert says in answer.json()["detail"] and "url" in answer.json()["errors"]


def test_a_loopback_url_is_refused_without_allowed_networks(operator, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []

    answer = subscribe(operator, url="http://127.0.0.2:8080/hooks")

    assert answer.status_code == 400 and "loopback address" in answer.json()["detail"]


def test_a_change_revalidates_the_url_and_keeps_the_secret(operator):
    created = subscribe(operator).json()
    webhook = f"{WEBHOOKS}{created['id']}/"

    refused = operator.patch(webhook, {"url": "http://192.168.1.1/"}, format="json")
    changed = operator.patch(
        webhook, {"events": ["alert.opened"], "is_active": False}, format="json"
    )

    assert refused.status_code == 400 and "private address" in refused.json()["detail"]
    assert changed.status_code == 200
    assert changed.json()["events"] == ["alert.opened"] and changed.json()["is_active"] is False
    endpoint = Endpoint.objects.get()
    assert endpoint.url == HOOK_URL and endpoint.secret == created["secret"]


def test_put_needs_url_and_events_and_delete_removes_it(operator):
    webhook = f"{WEBHOOKS}{subscribe(operator).json()['id']}/"

    assert operator.put(webhook, {"url": HOOK_URL}, format="json").status_code == 400
    replaced = operator.put(
        webhook, {"url": "http://127.0.0.3/x", "events": ["stock.low"]}, format="json"
    )
    assert replaced.status_code == 200 and replaced.json()["url"] == "http://127.0.0.3/x"
    assert operator.delete(webhook).status_code == 204
    assert operator.get(webhook).status_code == 404


def test_rotating_the_secret_shows_the_new_one_once(operator):
    created = subscribe(operator).json()

    rotated = operator.post(f"{WEBHOOKS}{created['id']}/rotate-secret/")

    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != created["secret"]
    assert Endpoint.objects.get().secret == rotated.json()["secret"]


def test_deliveries_list_every_try_and_a_replay_keeps_the_webhook_id(operator, settings):
    settings.NOTIFY_MAX_ATTEMPTS = 1
    webhook_id = subscribe(operator).json()["id"]
    message = emit("vend.succeeded", {"id": "5"}, subject="vend:5")
    claim = claim_due(worker="test", limit=5)
    (delivery,) = claim.deliveries
    record_outcome(
        delivery=delivery,
        token=claim.token,
        outcome=Outcome(False, 503, "HTTP 503"),
        started_at=delivery.created_at,
        duration_ms=12,
    )

    listed = operator.get(f"{WEBHOOKS}{webhook_id}/deliveries/").json()
    replayed = operator.post(f"{WEBHOOKS}{webhook_id}/deliveries/{delivery.pk}/replay/")

    (row,) = listed["results"]
    assert row["webhook_id"] == message.msg_id and row["state"] == "failed"
    assert row["attempt_log"][0]["status_code"] == 503
    assert row["attempt_log"][0]["duration_ms"] == 12
    assert replayed.status_code == 202
    assert replayed.json()["webhook_id"] == message.msg_id
    assert replayed.json()["state"] == "pending" and replayed.json()["attempts"] == 0
    assert Delivery.objects.get().message.msg_id == message.msg_id
    assert DeliveryAttempt.objects.count() == 1  # the history stays


def test_the_deliveries_list_costs_a_fixed_number_of_queries(
    operator, django_assert_max_num_queries
):
    webhook_id = subscribe(operator).json()["id"]
    for number in range(5):
        emit("vend.succeeded", {"id": str(number)}, subject=f"vend:{number}")

    with django_assert_max_num_queries(8):
        answer = operator.get(f"{WEBHOOKS}{webhook_id}/deliveries/")

    assert answer.json()["count"] == 5


def test_a_replay_of_another_webhooks_delivery_is_404(operator):
    first = subscribe(operator).json()["id"]
    second = subscribe(operator).json()["id"]
    emit("vend.succeeded", {"id": "5"}, subject="vend:5")
    delivery = Delivery.objects.get(endpoint_id=first)

    answer = operator.post(f"{WEBHOOKS}{second}/deliveries/{delivery.pk}/replay/")

    assert answer.status_code == 404


@pytest.mark.parametrize("role", [roles.VIEWER, roles.DRIVER, roles.TECHNICIAN])
def test_other_roles_are_refused_with_403(client_for, role):
    client = client_for(staff_with_role(role))

    assert subscribe(client).status_code == 403
    assert client.get(WEBHOOKS).status_code == 403
    assert not Endpoint.objects.exists()


def test_a_non_staff_user_is_refused(client_for):
    assert subscribe(client_for(UserFactory())).status_code == 403


def test_an_operator_role_created_before_webhooks_holds_their_permissions():
    user = staff_with_role(roles.OPERATOR)
    assert user.has_perms(
        ["vending_site.add_endpoint", "vending_site.view_delivery", "vending_site.change_delivery"]
    )


@pytest.mark.parametrize(
    "filters", [{"location": ["3\x00"]}, {"loc\x00ation": ["3"]}], ids=["value", "key"]
)
def test_a_nul_character_in_a_filter_is_400_not_a_database_error(operator, filters):
    # PostgreSQL's jsonb cannot hold \u0000: unchecked, the INSERT failed with a 500.
    answer = subscribe(operator, filters=filters)

    assert answer.status_code == 400, answer.content
    assert "filters" in answer.json()["errors"]
    assert not Endpoint.objects.exists()
