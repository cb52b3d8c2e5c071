"""Who may call which REST endpoint: anonymous, a user with no role, a vend-client user, a
vend-client API key, staff in no role group and staff holding the Operator role, against
every REST endpoint (see docs/security.md; tests/test_roles_matrix.py has each role)."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from devices.tests.helpers import DEVICE_ID
from tests.factories import UserFactory, staff_with_role
from transactions.models import Transaction
from vending_site.auth import roles

MISSING = "00000000-0000-4000-8000-000000000000"  # fixed: xdist workers must agree on ids
V, C = {"device_id": DEVICE_ID}, {"command": "STATUS"}
A = {"action": "approve"}
ROLES = ("anonymous", "plain", "vend_client", "api_key", "no_role", "staff")

# method, path, body, expected status per role in ROLES order.
MATRIX = [
    ("post", "/api/v1/vend/1", V, (401, 403, 202, 202, 403, 202)),
    ("post", "/vend/1", V, (401, 403, 202, 202, 403, 202)),
    ("get", "/api/v1/transactions/", None, (401, 403, 200, 200, 403, 200)),
    ("get", f"/api/v1/transactions/{MISSING}", None, (401, 403, 404, 404, 403, 404)),
    ("post", f"/api/v1/transactions/{MISSING}/cancel", {}, (401, 403, 404, 404, 403, 404)),
    ("get", "/api/v1/devices/", None, (401, 403, 200, 200, 403, 200)),
    ("get", "/esp32/devices/list", None, (401, 403, 200, 200, 403, 200)),
    ("post", "/esp32/devices/select", V, (401, 403, 403, 403, 403, 200)),
    ("post", "/esp32/devices/auto-select", {}, (401, 403, 403, 403, 403, 200)),
    # Staff pass the permission; firmware v2.1 acts on no STATUS, hence 409.
    ("post", f"/api/v1/devices/{DEVICE_ID}/commands", C, (401, 403, 403, 403, 403, 409)),
    # Staff only; approving an approved machine changes nothing and answers it as it is.
    ("post", f"/api/v1/devices/{DEVICE_ID}/admission", A, (401, 403, 403, 403, 403, 200)),
    ("get", "/api/v1/reports/sales", None, (401, 403, 403, 403, 403, 200)),
    ("get", "/status", None, (200, 200, 200, 200, 200, 200)),
    # Webhook subscriptions: an Operator's (an unknown event type answers 400, nothing saved).
    ("get", "/api/v1/webhooks/", None, (401, 403, 403, 403, 403, 200)),
    ("post", "/api/v1/webhooks/", {"url": "x", "events": ["no"]}, (401, 403, 403, 403, 403, 400)),
]


def client_as(role: str) -> APIClient:
    client = APIClient()
    if role == "plain":
        client.force_authenticate(UserFactory(vend_client=False))
    elif role == "vend_client":
        client.force_authenticate(UserFactory())
    elif role == "no_role":  # a staff account nobody gave a role yet: holds nothing
        client.force_authenticate(UserFactory(is_staff=True, vend_client=False))
    elif role == "staff":
        client.force_authenticate(staff_with_role(roles.OPERATOR))
    elif role == "api_key":
        _key, secret = APIKey.objects.create_key(name="matrix")
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return client


def call(client: APIClient, method: str, path: str, body):
    if method == "get":
        return client.get(path)
    return client.post(path, body, format="json")


@pytest.mark.parametrize("role_index", range(len(ROLES)), ids=ROLES)
@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX, ids=[m[1] for m in MATRIX])
def test_auth_matrix(online_device, method, path, body, expected, role_index):
    response = call(client_as(ROLES[role_index]), method, path, body)

    assert response.status_code == expected[role_index], response.content
    if response.status_code in (401, 403):
        assert set(response.json()) == {"detail", "code"}
        assert response.json()["detail"]


def test_a_user_without_a_role_is_told_what_is_missing(online_device):
    response = call(client_as("plain"), "post", "/api/v1/vend/1", V)

    assert response.json() == {
        "detail": "This account may not use the vending API: staff must add it to the "
        "'vend-client' group (or use a vend-client API key).",
        "code": "not_a_vend_client",
    }
    assert not Transaction.objects.exists()


def test_device_management_refuses_a_vend_client_with_a_staff_only_message(online_device):
    response = call(client_as("vend_client"), "post", "/esp32/devices/auto-select", {})

    assert response.json() == {
        "detail": "Only staff holding devices.operate_device may do this.",
        "code": "staff_only",
    }


def test_a_staff_account_in_no_role_is_told_which_permission_it_lacks(online_device):
    response = call(client_as("no_role"), "post", "/api/v1/vend/1", V)

    assert response.json() == {
        "detail": "This account lacks the permission devices.operate_device "
        "(ask an operator for a role that has it).",
        "code": "permission_denied",
    }
    assert not Transaction.objects.exists()


def test_an_anonymous_call_is_401_and_names_a_scheme(online_device):
    response = APIClient().get("/api/v1/transactions/")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_jwt_flow_still_works_for_a_vend_client(online_device):
    UserFactory(username="robot")
    client = APIClient()
    tokens = client.post(
        "/api/v1/auth/token/", {"username": "robot", "password": "pw-for-tests-1"}, format="json"
    ).json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")

    assert client.post("/api/v1/vend/2", V, format="json").status_code == 202


@pytest.mark.parametrize(
    "header",
    [
        "Api-Key nonsense",
        "Api-Key abcdefgh.notthesecret",
        "Api-Key {prefix}.notthesecret",
        "Api-Key \u00e9t\u00e9.x",
    ],
    ids=["malformed", "unknown-prefix", "wrong-secret", "non-ascii"],
)
def test_a_bad_api_key_is_401_with_a_message(online_device, header):
    real, _secret = APIKey.objects.create_key(name="real")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(prefix=real.prefix))

    response = client.get("/api/v1/transactions/")

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


def test_a_revoked_api_key_is_refused(online_device):
    api_key, secret = APIKey.objects.create_key(name="gone")
    api_key.revoked = True
    api_key.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")

    assert client.post("/api/v1/vend/1", V, format="json").status_code == 401


def test_an_expired_api_key_is_refused(online_device):
    from datetime import timedelta

    from django.utils import timezone

    _key, secret = APIKey.objects.create_key(
        name="last-year", expiry_date=timezone.now() - timedelta(days=1)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")

    response = client.post("/api/v1/vend/1", V, format="json")

    assert response.status_code == 401
    assert response.json() == {"detail": "The API key has expired.", "code": "expired_api_key"}
    assert not Transaction.objects.exists()


@pytest.mark.parametrize("role", ["vend_client", "api_key", "staff"])
def test_each_vending_role_reads_and_cancels_its_own_vend(online_device, role):
    """The matrix above probes detail and cancel with an id that exists nowhere; this is the
    same pair of endpoints on a vend that exists and belongs to the caller."""
    client = client_as(role)
    vend = client.post("/api/v1/vend/1", V, format="json").json()["id"]

    assert client.get(f"/api/v1/transactions/{vend}").status_code == 200
    cancelled = client.post(f"/api/v1/transactions/{vend}/cancel", {}, format="json")
    assert cancelled.status_code == 200, cancelled.content
    assert Transaction.objects.get(pk=vend).state == "cancelled"


@pytest.mark.parametrize("role", ["anonymous", "plain"])
def test_a_caller_without_a_vending_role_cannot_read_or_cancel_an_existing_vend(
    online_device, role
):
    vend = client_as("staff").post("/api/v1/vend/1", V, format="json").json()["id"]
    client = client_as(role)
    expected = 401 if role == "anonymous" else 403

    assert client.get(f"/api/v1/transactions/{vend}").status_code == expected
    assert client.post(f"/api/v1/transactions/{vend}/cancel", {}).status_code == expected
    assert Transaction.objects.get(pk=vend).state == "queued"


def test_an_api_key_stays_a_vend_client_even_if_its_account_is_made_staff(online_device):
    client = client_as("api_key")
    client.get("/api/v1/transactions/")  # creates the key's service account
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(username__startswith="api-key.").update(is_staff=True)

    response = client.post("/esp32/devices/select", V, format="json")

    assert response.status_code == 403
    # Nor does it see or cancel anyone else's vend.
    someone = client_as("vend_client")
    others = someone.post("/api/v1/vend/1", V, format="json").json()["id"]
    assert client.get(f"/api/v1/transactions/{others}").status_code == 404
    assert client.post(f"/api/v1/transactions/{others}/cancel").status_code == 404
    listed = client.get("/api/v1/transactions/").json()
    assert others not in [row["id"] for row in listed["results"]]


def test_each_api_key_has_its_own_idempotency_scope_and_its_own_vends(online_device):
    first, second = client_as("api_key"), client_as("api_key")
    headers = {"HTTP_IDEMPOTENCY_KEY": "order-17"}

    a = first.post("/api/v1/vend/1", V, format="json", **headers)
    a_again = first.post("/api/v1/vend/1", V, format="json", **headers)
    b = second.post("/api/v1/vend/1", V, format="json", **headers)

    assert a.status_code == b.status_code == 202
    assert a_again["Idempotent-Replayed"] == "true"
    assert a_again.json()["id"] == a.json()["id"]
    assert b.json()["id"] != a.json()["id"]  # the same key string from another client vends
    assert Transaction.objects.count() == 2
    # Each key sees its own vend, not the other's.
    assert second.get(f"/api/v1/transactions/{a.json()['id']}").status_code == 404
    assert [t["id"] for t in second.get("/api/v1/transactions/").json()["results"]] == [
        b.json()["id"]
    ]


def test_create_api_key_prints_a_key_that_works_once_stored(online_device, capsys):
    call_command("create_api_key", "--name", "kiosk-1")
    secret = capsys.readouterr().out.strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")

    assert client.post("/api/v1/vend/1", V, format="json").status_code == 202
    stored = APIKey.objects.get(name="kiosk-1")
    assert secret.split(".")[1] not in stored.hashed_key
