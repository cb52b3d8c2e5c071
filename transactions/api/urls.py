"""The vend app's routes, included by ``vending_site.urls``. The vend's view differs by server:
under ASGI (``manage.py serve``) it is async, so a vend asked to ``wait`` holds no thread;
under WSGI (granian, ``vending_site.urls_wsgi``) it is the same view, synchronous."""

from django.urls import re_path

from . import views

UUID = r"(?P<pk>[0-9a-fA-F-]{32,36})"


def vend_view(*, asgi: bool):
    return views.vend if asgi else views.vend_sync


def api_v1_patterns(*, asgi: bool) -> list:
    """Under /api/v1/ (the namespace api-v1)."""
    return [
        re_path(r"^vend/(?P<slot_id>[^/]+)/?$", vend_view(asgi=asgi), name="vend"),
        re_path(r"^transactions/?$", views.TransactionListView.as_view(), name="transaction-list"),
        re_path(
            rf"^transactions/{UUID}/?$",
            views.TransactionDetailView.as_view(),
            name="transaction-detail",
        ),
        re_path(
            rf"^transactions/{UUID}/cancel/?$",
            views.TransactionCancelView.as_view(),
            name="transaction-cancel",
        ),
        re_path(r"^reports/sales/?$", views.SalesReportView.as_view(), name="sales-report"),
    ]


def legacy_patterns(*, asgi: bool) -> list:
    """At the root: the original, unversioned vend path."""
    return [re_path(r"^vend/(?P<slot_id>[^/]+)/?$", vend_view(asgi=asgi), name="vend-legacy")]
