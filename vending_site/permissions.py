"""Who may call the REST API, and as whom.

Roles (the README's "Security" section has the full table):

- **staff** (``is_staff``): everything, including device management.
- **vend-client**: a user in the ``vend-client`` group, or an API key
  (djangorestframework-api-key, ``Authorization: Api-Key <key>``). May vend, list, read and
  cancel its own vends, and read the device list; never manage devices.
- any other authenticated user: 403 with a message saying what is missing.

The library's ``HasAPIKey`` permission only says "some valid key was sent"; it leaves
``request.user`` anonymous, so nothing could tell two keys apart. Here a key *authenticates*
instead, as its own service user (``api-key.<prefix>``, created on first use, with no
password, so it can never log in any other way). That user gives each key its own throttle
bucket, its own Idempotency-Key scope and "its own vends", with no change to those rules.
A key's role is fixed: even if someone ticks "staff" on its user, a key stays a vend-client.
"""

import re

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework_api_key.models import APIKey
from rest_framework_api_key.permissions import KeyParser

VEND_CLIENT_GROUP = "vend-client"
API_KEY_USER_PREFIX = "api-key."
_KEY_SHAPE = re.compile(r"[A-Za-z0-9]{1,8}\.[A-Za-z0-9]{1,128}")


def service_username(api_key: APIKey) -> str:
    return f"{API_KEY_USER_PREFIX}{api_key.prefix}"


def _service_user(username: str):
    """``get_or_create`` that survives two first requests of a key racing to create it."""
    users = get_user_model().objects
    try:
        with transaction.atomic():
            # Created with an unusable password in the same INSERT: a crash or a racing
            # first request can never find it looking like a person's account.
            return users.get_or_create(
                username=username, defaults={"password": make_password(None)}
            )
    except IntegrityError:
        return users.get(username=username), False


class APIKeyAuthentication(BaseAuthentication):
    """``Authorization: Api-Key <prefix>.<secret>`` → the key's service user."""

    parser = KeyParser()

    def authenticate(self, request):
        key = self.parser.get(request)
        if key is None:
            return None
        key = key.strip()
        if not _KEY_SHAPE.fullmatch(key):
            raise AuthenticationFailed("The API key is malformed.", code="invalid_api_key")
        try:
            api_key = APIKey.objects.get_from_key(key)
        except APIKey.DoesNotExist:
            raise AuthenticationFailed(
                "The API key is unknown or revoked.", code="invalid_api_key"
            ) from None
        if api_key.has_expired:
            raise AuthenticationFailed("The API key has expired.", code="expired_api_key")
        user, created = _service_user(service_username(api_key))
        if not created and user.has_usable_password():
            # A person's account that happens to carry the name: never speak for it.
            raise AuthenticationFailed(
                "The API key's service account clashes with a user account; ask staff.",
                code="invalid_api_key",
            )
        if not user.is_active:
            raise AuthenticationFailed("The API key's account is disabled.", code="invalid_api_key")
        return user, api_key

    def authenticate_header(self, request) -> str:
        return "Api-Key"


def is_api_key(request) -> bool:
    return isinstance(getattr(request, "auth", None), APIKey)


def is_staff(request) -> bool:
    user = request.user
    return bool(user and user.is_authenticated and user.is_staff and not is_api_key(request))


def is_vend_client(request) -> bool:
    """Staff, a vend-client API key, or a user in the vend-client group (one query, once)."""
    user = request.user
    if not (user and user.is_authenticated):
        return False
    if is_api_key(request) or is_staff(request):
        return True
    cached = getattr(user, "_is_vend_client", None)
    if cached is None:
        cached = user.groups.filter(name=VEND_CLIENT_GROUP).exists()
        user._is_vend_client = cached
    return cached


class IsVendClient(BasePermission):
    """Vend, read status and devices, read and cancel one's own vends."""

    message = (
        "This account may not use the vending API: staff must add it to the "
        f"'{VEND_CLIENT_GROUP}' group (or use a vend-client API key)."
    )
    code = "not_a_vend_client"

    def has_permission(self, request, view) -> bool:
        return is_vend_client(request)


class IsStaff(BasePermission):
    """Device management: staff only, never an API key."""

    message = "Only staff may manage devices."
    code = "staff_only"

    def has_permission(self, request, view) -> bool:
        return is_staff(request)
