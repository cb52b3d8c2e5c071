"""Rate limits of the vend endpoints. Counting: ``vending_site.http.throttling``."""

from rest_framework.throttling import UserRateThrottle

from vending_site.http.throttling import RateFromSettings, WindowCounting


class VendThrottle(WindowCounting, RateFromSettings, UserRateThrottle):
    """Vend requests, per user or key: stricter than reads."""

    scope = "vend"
    rate_setting = "API_THROTTLE_VEND"
