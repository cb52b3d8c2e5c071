"""Dates named in a request's query (``?from=YYYY-MM-DD&to=...``), and the server's own
time zone, in which those dates are whole days."""

import zoneinfo
from datetime import date

from django.conf import settings
from django.utils import timezone

from vending_site.http.errors import InvalidRequest

# A day's local midnights, in any time zone, and the day after the last must convert to
# UTC and back: Python's datetime ends at years 1 and 9999, so 0001-01-01 east of UTC is
# an OverflowError (a 500), not a day. No sale or stock movement predates 2000, and a
# report's previous period (at most 366 days earlier) stays within range too.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(9998, 12, 31)


def parse_day(name: str, text: str | None) -> date | None:
    """The date the parameter ``name`` gives as ``YYYY-MM-DD`` (``None`` if absent), from
    :data:`FIRST_DAY` to :data:`LAST_DAY`; anything else is :class:`InvalidRequest` (400)
    naming the parameter."""
    if text is None:
        return None
    try:
        if len(text) != 10:
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date as YYYY-MM-DD, not {text[:20]!r}.") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise InvalidRequest(f"{name} must be a date from {FIRST_DAY} to {LAST_DAY}, not {text!r}.")
    return day


def server_zone() -> zoneinfo.ZoneInfo:
    """The zone of ``TIME_ZONE``: reports, stock movements and pick lists count its days."""
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def local_today() -> date:
    """Today in the server's time zone."""
    return timezone.localdate(timezone=server_zone())
