"""Wrong passwords: a username or an address that keeps guessing is locked out (django-axes)
on the token endpoint and the admin's login form alike, told so and for how long, and no
password is hashed for it meanwhile; the token endpoints are rate-limited per address."""

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import UserFactory

PASSWORD = "pw-for-tests-1"
TOKEN = "/api/v1/auth/token/"
REFRESH = "/api/v1/auth/token/refresh/"
HERE, ELSEWHERE = "10.0.0.1", "10.0.0.2"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def lockout_settings(settings):
    settings.AXES_FAILURE_LIMIT = 10
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    settings.AUTH_THROTTLE = "1000/min"  # the lockout is under test here, not the rate


@pytest.fixture
def robot():
    return UserFactory(username="robot")


def token(username: str, password: str, address: str = HERE):
    return APIClient().post(
        TOKEN, {"username": username, "password": password}, format="json", REMOTE_ADDR=address
    )


def assert_locked_out(response):
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "locked_out"
    assert "Too many failed logins for this account or from this address" in body["detail"]
    assert "refused for 15 more minutes" in body["detail"]
    assert 0 < int(response["Retry-After"]) <= 15 * 60


def test_ten_wrong_passwords_lock_the_account_against_the_right_one_too(robot):
    statuses = [token("robot", f"wrong-{n}").status_code for n in range(10)]

    assert statuses == [401] * 9 + [429]
    assert_locked_out(token("robot", PASSWORD))


def test_a_locked_username_is_refused_from_another_address_too(robot):
    for n in range(10):
        token("robot", f"wrong-{n}", address=HERE)

    assert_locked_out(token("robot", PASSWORD, address=ELSEWHERE))


def test_an_address_guessing_many_usernames_is_locked_for_every_username(robot):
    for n in range(10):
        token(f"guess-{n}", "wrong")

    assert_locked_out(token("robot", PASSWORD, address=HERE))
    assert token("robot", PASSWORD, address=ELSEWHERE).status_code == 200


def test_a_locked_out_login_hashes_no_password(robot):
    for n in range(10):
        token("robot", f"wrong-{n}")

    with mock.patch.object(
        MD5PasswordHasher, "encode", autospec=True, side_effect=MD5PasswordHasher.encode
    ) as hashing:
        assert_locked_out(token("robot", PASSWORD))
        assert_locked_out(token("nobody", "wrong"))

    assert hashing.call_count == 0


def test_the_lockout_ends_when_the_cool_off_has_passed(robot):
    from axes.models import AccessAttempt  # importable once axes is installed

    for n in range(10):
        token("robot", f"wrong-{n}")
    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16)
    )

    assert token("robot", PASSWORD).status_code == 200


def test_a_few_wrong_passwords_then_the_right_one_logs_in(robot):
    for n in range(9):
        token("robot", f"wrong-{n}")

    assert token("robot", PASSWORD).status_code == 200


def test_the_admin_login_page_says_the_account_is_locked_and_for_how_long():
    UserFactory(username="operator", is_staff=True, is_superuser=True)
    browser = Client(REMOTE_ADDR=HERE)

    wrong = [
        browser.post("/admin/login/", {"username": "operator", "password": f"no-{n}"})
        for n in range(10)
    ]
    right = browser.post(
        "/admin/login/?next=/admin/", {"username": "operator", "password": PASSWORD}
    )

    assert [r.status_code for r in wrong] == [200] * 9 + [429]
    assert right.status_code == 429
    page = right.content.decode()
    assert "Too many failed logins for this account or from this address" in page
    assert "refused for 15 more minutes" in page
    assert "_auth_user_id" not in browser.session
    assert browser.get("/admin/").status_code == 302  # still sent to the login page


def test_token_requests_past_the_auth_rate_are_429_with_retry_after(settings, robot):
    settings.AUTH_THROTTLE = "3/min"
    wrong = {"username": "robot", "password": "wrong"}
    client = APIClient()

    statuses = [client.post(TOKEN, wrong, format="json").status_code for _ in range(3)]
    refused = client.post(TOKEN, {"username": "robot", "password": PASSWORD}, format="json")
    refresh = client.post(REFRESH, {"refresh": "x"}, format="json")
    elsewhere = client.post(TOKEN, wrong, format="json", REMOTE_ADDR=ELSEWHERE)

    assert statuses == [401, 401, 401]
    for response in (refused, refresh):
        assert response.status_code == 429
        assert response.json()["code"] == "throttled"
        assert int(response["Retry-After"]) > 0
    assert elsewhere.status_code == 401


def test_the_default_auth_rate_is_ten_a_minute_per_address(settings):
    settings.AUTH_THROTTLE = "10/min"
    client = APIClient()
    wrong = {"username": "nobody", "password": "wrong"}

    statuses = [client.post(TOKEN, wrong, format="json").status_code for _ in range(11)]

    assert statuses[:10] == [401] * 9 + [429]  # the tenth failure locks (axes)
    assert statuses[10] == 429
