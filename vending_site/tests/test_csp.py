"""The Content-Security-Policy on pages served without nginx (nginx sends the same text:
tests/deploy). The browser tests (tests/browser) load the dashboard and the admin under it."""

import pytest

from vending_site.http.csp import POLICY

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/admin/login/", "/"])
def test_a_page_carries_the_content_security_policy(client, path):
    response = client.get(path, follow=True)

    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"] == POLICY


def test_the_policy_allows_nothing_from_another_origin_and_no_inline_code():
    directives = dict(part.split(" ", 1) for part in POLICY.split("; "))
    for name in ("default-src", "script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert "'unsafe-inline'" not in POLICY and "'unsafe-eval'" not in POLICY
    assert directives["frame-ancestors"] == "'none'"
