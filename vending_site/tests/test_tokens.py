"""JWTs end with the credentials they were issued for: a password change or a deactivation
ends both the access and the refresh tokens a user holds; a refresh token works once."""

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken

from tests.factories import UserFactory

PASSWORD = "pw-for-tests-1"
TOKEN = "/api/v1/auth/token/"
REFRESH = "/api/v1/auth/token/refresh/"
READ = "/api/v1/transactions/"

pytestmark = pytest.mark.django_db


def log_in(username: str = "robot") -> dict:
    response = APIClient().post(TOKEN, {"username": username, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def read_with(access: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get(READ)


def refresh(token: str):
    return APIClient().post(REFRESH, {"refresh": token}, format="json")


@pytest.fixture
def robot():
    return UserFactory(username="robot")


def test_a_refresh_token_is_refused_after_a_password_change(robot):
    tokens = log_in()
    robot.set_password("a-new-password-2")
    robot.save()

    response = refresh(tokens["refresh"])

    assert response.status_code == 401
    assert response.json()["detail"]
    assert BlacklistedToken.objects.filter(token__user=robot).count() == 1


def test_an_access_token_is_refused_after_a_password_change(robot):
    tokens = log_in()
    assert read_with(tokens["access"]).status_code == 200
    robot.set_password("a-new-password-2")
    robot.save(update_fields=["password"])

    response = read_with(tokens["access"])

    assert response.status_code == 401
    assert "password has been changed" in response.json()["detail"]


def test_a_new_login_after_a_password_change_works(robot):
    log_in()
    robot.set_password(PASSWORD)  # same password, new salt: a new hash all the same
    robot.save()

    tokens = log_in()

    assert read_with(tokens["access"]).status_code == 200
    assert refresh(tokens["refresh"]).status_code == 200


def test_a_rotated_refresh_token_is_refused_the_second_time(robot):
    tokens = log_in()

    first = refresh(tokens["refresh"])
    second = refresh(tokens["refresh"])

    assert first.status_code == 200
    assert set(first.json()) == {"access", "refresh"}
    assert second.status_code == 401
    assert refresh(first.json()["refresh"]).status_code == 200


def test_a_deactivated_users_tokens_are_refused_and_stay_so_after_reactivation(robot):
    tokens = log_in()
    robot.is_active = False
    robot.save()

    assert read_with(tokens["access"]).status_code == 401
    assert refresh(tokens["refresh"]).status_code == 401
    robot.is_active = True
    robot.save()
    assert refresh(tokens["refresh"]).status_code == 401


def test_saving_a_user_without_changing_credentials_keeps_their_tokens(robot):
    tokens = log_in()
    robot.first_name = "Robbie"
    robot.save()

    assert read_with(tokens["access"]).status_code == 200
    assert refresh(tokens["refresh"]).status_code == 200


def test_a_deleted_users_refresh_token_is_401_not_500(robot):
    tokens = log_in()
    robot.delete()

    assert refresh(tokens["refresh"]).status_code == 401
