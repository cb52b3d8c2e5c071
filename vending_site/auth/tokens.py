"""JWTs end with the credentials they were issued for.

Every token carries a hash of its user's password hash (SimpleJWT's ``CHECK_REVOKE_TOKEN``),
so an access token stops working the moment the password changes. Refresh tokens are
rotated (each refresh hands out a new one and blacklists the one used), and when a user's
password hash changes or the user is deactivated, every refresh token still outstanding for
them is blacklisted (:func:`revoke_tokens_of`): a leaked token is not a way back in after the
owner or staff change the password or switch the account off.
"""

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_save
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.utils import get_md5_hash_password

_CREDENTIAL_FIELDS = {"password", "is_active"}


def revoke_tokens_of(user) -> int:
    """Blacklist every unexpired refresh token outstanding for ``user``; how many were."""
    outstanding = OutstandingToken.objects.filter(
        user=user, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True
    )
    created = BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token=token) for token in outstanding], ignore_conflicts=True
    )
    return len(created)


def prune_expired_tokens() -> int:
    """Forget refresh tokens past their expiry (with their blacklist rows): an expired token
    is refused on its own, so its record only grows the tables. ``prune_logs`` runs it."""
    deleted, _ = OutstandingToken.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


def _note_credential_change(sender, instance, update_fields=None, raw=False, **kwargs) -> None:
    instance._revoke_tokens = False
    if instance.pk is None or raw:  # a new user, or loaddata: no tokens to end
        return
    if update_fields is not None and not _CREDENTIAL_FIELDS & set(update_fields):
        return  # e.g. last_login on every login: no read
    before = sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    if before is None:
        return
    instance._revoke_tokens = before["password"] != instance.password or (
        before["is_active"] and not instance.is_active
    )


def _revoke_on_credential_change(sender, instance, **kwargs) -> None:
    if getattr(instance, "_revoke_tokens", False):
        instance._revoke_tokens = False
        revoke_tokens_of(instance)


def connect_signals() -> None:
    user_model = get_user_model()
    pre_save.connect(_note_credential_change, sender=user_model, dispatch_uid="tokens-note")
    post_save.connect(_revoke_on_credential_change, sender=user_model, dispatch_uid="tokens-revoke")


class RefreshSerializer(TokenRefreshSerializer):
    """SimpleJWT's refresh, which also refuses (401) a refresh token issued before its
    user's password last changed (a token with no outstanding-token row, issued before
    the blacklist existed, is not reached by :func:`revoke_tokens_of`) or whose user was
    deleted."""

    def validate(self, attrs):
        token = RefreshToken(attrs["refresh"])  # 401 when expired, malformed or blacklisted
        user = (
            get_user_model()
            .objects.filter(**{api_settings.USER_ID_FIELD: token.get(api_settings.USER_ID_CLAIM)})
            .only("password", "is_active")
            .first()
        )
        if user is None:  # deleted: SimpleJWT's own lookup would raise DoesNotExist (a 500)
            raise AuthenticationFailed(
                "No active account found for the given token.", code="no_active_account"
            )
        if api_settings.CHECK_REVOKE_TOKEN and token.get(
            api_settings.REVOKE_TOKEN_CLAIM
        ) != get_md5_hash_password(user.password):
            raise AuthenticationFailed(
                "The user's password has been changed.", code="password_changed"
            )
        return super().validate(attrs)
