"""Password logins (the admin's form, ``POST /api/v1/auth/token/``): how many wrong passwords
are heard, and what a locked-out client is told.

Checking a password costs a hash (tens of milliseconds of CPU by design), so a client that
keeps guessing both tries passwords and takes the CPU the device polls need. Two guards:

- django-axes counts failed logins in the database. After ``AXES_FAILURE_LIMIT`` failures
  within ``AXES_COOLOFF_TIME`` for one username (from any address) or from one address (for
  any username), further logins of that username or from that address are refused before
  any password is hashed, the right password included, until ``AXES_COOLOFF_TIME`` has
  passed since the last failure. Attempts while locked out do not extend it.
- ``vending_site.http.throttling.AuthThrottle`` limits the token and token-refresh endpoints per
  client address (``AUTH_THROTTLE``), in the same cache as the other throttles, before the
  view runs.

A locked-out API client gets 429 ``{"detail", "code": "locked_out"}`` with ``Retry-After``;
the admin's login page says the same in HTML (status 429).
"""

import math
from datetime import timedelta

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt, AccessLog
from django.contrib import admin
from django.db.models import Max, Q
from django.shortcuts import render
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.settings import api_settings as drf_settings
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from vending_site.http.network import client_ip
from vending_site.http.throttling import AuthThrottle


def locked_for(request, credentials: dict | None = None) -> timedelta:
    """How much longer the lockout that refused ``request`` lasts (at least a second)."""
    cool_off = get_cool_off(request) or timedelta(0)
    # The latest failure of the address or the username: whichever locked, the lock ends
    # AXES_COOLOFF_TIME after it at the latest.
    matching = Q(ip_address=client_ip(request))
    username = get_client_username(request, credentials)
    if username:
        matching |= Q(username=username)
    last = AccessAttempt.objects.filter(matching).aggregate(last=Max("attempt_time"))["last"]
    if last is None:
        return cool_off
    return max(last + cool_off - timezone.now(), timedelta(seconds=1))


def lockout_message(remaining: timedelta) -> str:
    minutes = max(math.ceil(remaining.total_seconds() / 60), 1)
    return (
        "Too many failed logins for this account or from this address: logins are refused "
        f"for {minutes} more minute{'s' if minutes != 1 else ''}."
    )


def lockout_response(request, original_response=None, credentials=None):
    """``AXES_LOCKOUT_CALLABLE``: the admin's login page, saying the account or address is
    locked and for how long (429)."""
    remaining = locked_for(request, credentials)
    context = {
        **admin.site.each_context(request),
        "title": "Log in",
        "lockout_message": lockout_message(remaining),
    }
    # Rendered here: the middleware that asks for it runs after responses are rendered.
    response = render(request, "admin/locked_out.html", context, status=429)
    response["Retry-After"] = str(math.ceil(remaining.total_seconds()))
    return response


class LockedOut(exceptions.Throttled):
    default_code = "locked_out"

    def __init__(self, remaining: timedelta):
        super().__init__(wait=remaining.total_seconds(), detail=lockout_message(remaining))


class _Throttled:
    def get_throttles(self):
        # Before the anonymous limit: a hash-rate guard should not spend the address's
        # general allowance on a request it refuses.
        return [AuthThrottle(), *(t() for t in drf_settings.DEFAULT_THROTTLE_CLASSES)]


class TokenObtainView(_Throttled, TokenObtainPairView):
    """``POST /api/v1/auth/token/``: a JWT pair for a username and password; 429
    ``locked_out`` while axes refuses the username or the address."""

    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except exceptions.AuthenticationFailed:
            # Axes flags the request it refused (or the failure that reached the limit).
            if not getattr(request, "axes_locked_out", False):
                raise
        raise LockedOut(locked_for(request, getattr(request, "axes_credentials", None)))


class TokenRefreshThrottledView(_Throttled, TokenRefreshView):
    """``POST /api/v1/auth/token/refresh/``, under :class:`AuthThrottle`."""


def prune_login_records(*, before) -> int:
    """Delete django-axes' records of logins (one per successful login, admin or token)
    older than ``before``; failed attempts are forgotten by axes itself after the cool-off.
    ``prune_logs`` runs it with its ``--older-than``."""
    deleted, _ = AccessLog.objects.filter(attempt_time__lt=before).delete()
    return deleted
