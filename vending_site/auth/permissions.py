"""Who may call the REST API, and as whom.

Roles (docs/security.md has the full table):

- **staff** (``is_staff``): what their role's permissions allow (``vending_site.auth.roles``;
  a superuser everything). Staff count as vend clients when they hold ``devices.view_device``
  (every role does), and vend only with ``devices.operate_device``.
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

A key once verified is remembered by this process for ``API_KEY_CACHE_SECONDS`` (5 s by
default; 0 turns it off), so a kiosk sending a vend a second does not pay two queries per
request to be recognised again. Remembered is the SHA-256 of the key (never the key itself)
with its key row and service user, and only after every check below passed. Expiry is
still checked on every request; a revoked, edited or deleted key, or an edited service
user, is forgotten at once by the process that saved it (model signals) and at the latest
``API_KEY_CACHE_SECONDS`` later by the other processes.
"""

import copy
import hashlib
import re
import threading
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.db.models.signals import post_delete, post_save
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
    """``get_or_create`` that survives two first requests of a key racing to create it.

    A plain read first: the user exists on every request but a key's first, and a read
    needs no transaction around it."""
    users = get_user_model().objects
    existing = users.filter(username=username).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            # Created with an unusable password in the same INSERT: a crash or a racing
            # first request can never find it looking like a person's account.
            return users.get_or_create(
                username=username, defaults={"password": make_password(None)}
            )
    except IntegrityError:
        return users.get(username=username), False


class _VerifiedKeys:
    """Keys this process verified in the last ``API_KEY_CACHE_SECONDS``: SHA-256 of the key
    -> (key row, service user). Bounded in size; each request gets its own copies."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, APIKey, object]] = {}
        self._lock = threading.Lock()
        # Bumped by clear(): a key read from the database before a revocation saved in this
        # process is not remembered after it (see put()).
        self.generation = 0

    def get(self, digest: str):
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return copy.copy(entry[1]), copy.copy(entry[2])

    def put(self, digest: str, api_key: APIKey, user, *, read_in: int) -> None:
        """Remember a key verified from rows read while ``generation`` was ``read_in``."""
        seconds = settings.API_KEY_CACHE_SECONDS
        if seconds <= 0:
            return
        with self._lock:
            if self.generation != read_in:
                return  # a key or user was saved meanwhile: what we read may be stale
            if len(self._entries) >= self.LIMIT:
                self._entries.clear()  # rare (more live keys than LIMIT): start over
            self._entries[digest] = (
                time.monotonic() + seconds,
                copy.copy(api_key),
                copy.copy(user),
            )

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.generation += 1


_verified_keys = _VerifiedKeys()


def forget_verified_keys(created: bool = False, **kwargs) -> None:
    """A key or a user changed: verify every key against the database again. A new row
    changes no remembered key (a key's first request creates its service user)."""
    if not created:
        _verified_keys.clear()


for _model in (APIKey, get_user_model()):
    post_save.connect(
        forget_verified_keys, sender=_model, dispatch_uid=f"forget-keys-save-{_model}"
    )
    post_delete.connect(
        forget_verified_keys, sender=_model, dispatch_uid=f"forget-keys-delete-{_model}"
    )


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
        digest = hashlib.sha256(key.encode()).hexdigest()
        remembered = _verified_keys.get(digest)
        if remembered is not None:
            api_key, user = remembered
            if api_key.has_expired:  # checked on every request, remembered or not
                raise AuthenticationFailed("The API key has expired.", code="expired_api_key")
            return user, api_key
        read_in = _verified_keys.generation
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
        _verified_keys.put(digest, api_key, user, read_in=read_in)
        return user, api_key

    def authenticate_header(self, request) -> str:
        return "Api-Key"


def is_api_key(request) -> bool:
    return isinstance(getattr(request, "auth", None), APIKey)


def is_staff(request) -> bool:
    user = request.user
    return bool(user and user.is_authenticated and user.is_staff and not is_api_key(request))


# What a staff account needs to use the vend clients' endpoints, and to vend.
STAFF_READS = "devices.view_device"
STAFF_VENDS = "devices.operate_device"


def lacks(*perms: str) -> str:
    """The refusal's sentence naming what is missing (every surface says it the same way)."""
    return (
        f"This account lacks the permission {', '.join(perms)} "
        "(ask an operator for a role that has it)."
    )


def in_vend_client_group(user) -> bool:
    """Whether ``user`` is in the vend-client group (one query, once per request)."""
    cached = getattr(user, "_is_vend_client", None)
    if cached is None:
        cached = user.groups.filter(name=VEND_CLIENT_GROUP).exists()
        user._is_vend_client = cached
    return cached


def is_vend_client(request, staff_needs: str = STAFF_READS) -> bool:
    """A vend-client API key, a user in the vend-client group, or staff holding
    ``staff_needs`` (a role's permission: a staff account in no role is no vend client)."""
    user = request.user
    if not (user and user.is_authenticated):
        return False
    if is_api_key(request):
        return True
    if is_staff(request) and user.has_perm(staff_needs):
        return True
    return in_vend_client_group(user)


class IsVendClient(BasePermission):
    """Vend, read status and devices, read and cancel one's own vends."""

    message = (
        "This account may not use the vending API: staff must add it to the "
        f"'{VEND_CLIENT_GROUP}' group (or use a vend-client API key)."
    )
    code = "not_a_vend_client"
    staff_needs = STAFF_READS

    def has_permission(self, request, view) -> bool:
        if is_vend_client(request, self.staff_needs):
            return True
        if is_staff(request):  # staff are told which permission their role lacks
            self.message = lacks(self.staff_needs)
            self.code = "permission_denied"
        return False


class MayVend(IsVendClient):
    """Vend: vend clients as always; staff with ``devices.operate_device``."""

    staff_needs = STAFF_VENDS
