"""Who may open a staff page (``templates/staff/``): a staff account holding the page's
permissions. Anonymous visitors are sent to log in; anyone else is shown a 403 page that names
what is missing. ``DASHBOARD_PUBLIC`` opens the dashboard only, never these pages."""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache


def may_open(user, perms: tuple[str, ...]) -> bool:
    return bool(user and user.is_authenticated and user.is_staff and user.has_perms(perms))


def staff_page(*perms: str, nav: str) -> Callable:
    """A page view decorator: the view runs only for staff holding every one of ``perms``
    (``nav`` marks the page in the header of the 403 page). Its answer is never cached (it
    shows money and stock as they are now)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        @never_cache
        def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), reverse("admin:login"))
            if not may_open(request.user, perms):
                return render(
                    request,
                    "staff/forbidden.html",
                    {"perms": perms, "nav": nav},
                    status=403,
                )
            return view(request, *args, **kwargs)

        return guarded

    return decorate
