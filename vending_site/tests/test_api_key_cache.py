"""A worker remembers a verified API key for ``API_KEY_CACHE_SECONDS``: what that saves,
and that revocation, expiry and a disabled account still take effect."""

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_api_key.models import APIKey

from vending_site.auth.permissions import forget_verified_keys, service_username

pytestmark = pytest.mark.django_db

LIST = "/api/v1/transactions/"


@pytest.fixture(autouse=True)
def nothing_remembered():
    forget_verified_keys()
    yield
    forget_verified_keys()


def client_with(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return client


def key_reads(client) -> int:
    """How many reads of the key table one request makes."""
    with CaptureQueriesContext(connection) as captured:
        assert client.get(LIST).status_code == 200
    return sum("rest_framework_api_key_apikey" in q["sql"] for q in captured.captured_queries)


def test_a_verified_key_is_not_read_again_within_the_cache_time(settings):
    settings.API_KEY_CACHE_SECONDS = 5
    _key, secret = APIKey.objects.create_key(name="kiosk")
    client = client_with(secret)

    assert key_reads(client) == 1
    assert key_reads(client) == 0
    assert key_reads(client) == 0


def test_with_no_cache_time_every_request_reads_the_key(settings):
    settings.API_KEY_CACHE_SECONDS = 0
    _key, secret = APIKey.objects.create_key(name="kiosk")
    client = client_with(secret)

    assert [key_reads(client) for _ in range(3)] == [1, 1, 1]


def test_a_key_revoked_in_this_process_is_refused_at_once(settings):
    settings.API_KEY_CACHE_SECONDS = 60
    api_key, secret = APIKey.objects.create_key(name="kiosk")
    client = client_with(secret)
    assert client.get(LIST).status_code == 200

    api_key.revoked = True
    api_key.save()

    response = client.get(LIST)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


def test_a_key_revoked_by_another_process_is_refused_once_the_cache_time_ran_out(settings):
    settings.API_KEY_CACHE_SECONDS = 0.5
    _key, secret = APIKey.objects.create_key(name="kiosk")
    client = client_with(secret)
    assert client.get(LIST).status_code == 200

    # Another worker revokes it: no signal reaches this process (a queryset update sends none).
    APIKey.objects.filter(name="kiosk").update(revoked=True)
    assert client.get(LIST).status_code == 200  # still remembered, for at most 0.5 s
    time.sleep(0.6)

    assert client.get(LIST).status_code == 401


def test_a_remembered_key_that_expires_meanwhile_is_refused(settings):
    settings.API_KEY_CACHE_SECONDS = 60
    _key, secret = APIKey.objects.create_key(
        name="kiosk", expiry_date=timezone.now() + timedelta(seconds=0.5)
    )
    client = client_with(secret)
    assert client.get(LIST).status_code == 200
    time.sleep(0.6)

    response = client.get(LIST)

    assert response.status_code == 401
    assert response.json() == {"detail": "The API key has expired.", "code": "expired_api_key"}


def test_a_disabled_service_account_is_refused_at_once(settings):
    from django.contrib.auth import get_user_model

    settings.API_KEY_CACHE_SECONDS = 60
    api_key, secret = APIKey.objects.create_key(name="kiosk")
    client = client_with(secret)
    assert client.get(LIST).status_code == 200

    user = get_user_model().objects.get(username=service_username(api_key))
    user.is_active = False
    user.save()

    assert client.get(LIST).status_code == 401


def test_a_wrong_secret_with_a_remembered_prefix_is_refused(settings):
    settings.API_KEY_CACHE_SECONDS = 60
    api_key, secret = APIKey.objects.create_key(name="kiosk")
    assert client_with(secret).get(LIST).status_code == 200

    response = client_with(f"{api_key.prefix}.{'x' * 32}").get(LIST)

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


def test_a_remembered_key_answers_with_its_own_user_not_a_shared_object(settings):
    """Two requests never share one user object (a request may set attributes on it)."""
    settings.API_KEY_CACHE_SECONDS = 60
    _key, secret = APIKey.objects.create_key(name="kiosk")
    client = client_with(secret)
    first = client.get(LIST)
    second = client.get(LIST)

    assert first.wsgi_request.user == second.wsgi_request.user  # the same account ...
    assert first.wsgi_request.user is not second.wsgi_request.user  # ... not the same object


def test_a_key_read_before_a_revocation_in_this_process_is_not_remembered_after_it(
    settings, monkeypatch
):
    """A request that read the key just before staff revoked it here must not keep it."""
    from vending_site.auth import permissions

    settings.API_KEY_CACHE_SECONDS = 60
    api_key, secret = APIKey.objects.create_key(name="kiosk")
    read_service_user = permissions._service_user

    def service_user_then_revoke(username):
        found = read_service_user(username)
        # Staff revoke the key between this request's reads and the end of its checks.
        APIKey.objects.filter(pk=api_key.pk).update(revoked=True)
        forget_verified_keys()  # what the admin's save() sends in this process
        return found

    monkeypatch.setattr(permissions, "_service_user", service_user_then_revoke)
    assert client_with(secret).get(LIST).status_code == 200  # read before the revocation
    monkeypatch.undo()

    assert client_with(secret).get(LIST).status_code == 401
