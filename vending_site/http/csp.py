"""The Content-Security-Policy of our pages (dashboard, admin, API browser).

The pages load their scripts, styles, icons and fonts from ``/static/`` and have no inline
script, inline style or event-handler attribute (the dashboard's data reaches its script in
``data-`` attributes; the admin's constants are ``<script type="application/json">`` data
blocks, which a policy does not block), so nothing outside this origin is allowed. The
dashboard's WebSocket is same-origin too (``connect-src 'self'`` covers ``wss:``/``ws:`` of
this host). Under nginx (``deploy/nginx/vending.conf.template``) nginx sends the same text on
every HTTPS answer and hides this copy; without nginx (``make run``, the browser tests) this
middleware sends it, so the browser tests run the pages under the policy.

``deploy/prod_local.py`` reads :data:`POLICY` to render nginx's configuration (importing
this module needs no settings).
"""

from django.utils.deprecation import MiddlewareMixin

POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware(MiddlewareMixin):  # sync and async capable
    """Adds :data:`POLICY` to every answer that does not set its own."""

    def process_response(self, request, response):
        if HEADER not in response:
            response[HEADER] = POLICY
        return response
