"""``/ws/events/`` opens only for pages of the site itself, whatever ``ALLOWED_HOSTS`` says.

The handshakes go through the whole ASGI application (origin check, session cookie, the
consumer), as the server hands them over; one goes to a real ``manage.py serve`` over a
socket.
"""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from tests.factories import UserFactory
from tests.integration.websocket import WebSocket
from tests.scratch.children import start_server, stop
from tests.scratch.net import free_port, wait_http
from vending_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def staff_cookie() -> str:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


def handshake(*, host: str, origin: str | None, cookie: str) -> bool:
    """Whether the socket was accepted (it is closed again at once)."""
    headers = [(b"host", host.encode()), (b"cookie", cookie.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))

    async def attempt():
        communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        await communicator.disconnect()
        return connected

    return async_to_sync(attempt)()


@pytest.fixture
def any_host(settings):
    settings.ALLOWED_HOSTS = ["*"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.DASHBOARD_PUBLIC = False


def test_a_page_of_another_site_cannot_open_the_staff_feed_when_any_host_is_allowed(any_host):
    cookie = staff_cookie()
    assert not handshake(host="vending.local", origin="https://evil.example", cookie=cookie)
    # Its own host under another name, a port or a scheme away: other sites, too.
    assert not handshake(host="vending.local", origin="http://vending.local:8080", cookie=cookie)
    assert not handshake(host="vending.local:8443", origin="https://vending.local", cookie=cookie)
    assert not handshake(host="vending.local", origin="null", cookie=cookie)


def test_the_sites_own_page_opens_the_staff_feed(any_host):
    cookie = staff_cookie()
    assert handshake(host="vending.local", origin="https://vending.local", cookie=cookie)
    assert handshake(host="vending.local", origin="http://vending.local", cookie=cookie)
    assert handshake(host="127.0.0.1:5000", origin="http://127.0.0.1:5000", cookie=cookie)
    assert handshake(host="[::1]:5000", origin="http://[::1]:5000", cookie=cookie)
    assert handshake(host="Vending.Local:8443", origin="https://vending.local:8443", cookie=cookie)


def test_an_origin_in_csrf_trusted_origins_opens_the_feed(any_host, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://vending.example.com", "https://*.fleet.example"]
    cookie = staff_cookie()
    assert handshake(host="web1:8000", origin="https://vending.example.com", cookie=cookie)
    assert handshake(host="web1:8000", origin="https://pi.fleet.example", cookie=cookie)
    assert not handshake(host="web1:8000", origin="http://vending.example.com", cookie=cookie)
    assert not handshake(host="web1:8000", origin="https://fleet.example.evil", cookie=cookie)


def test_a_client_that_sends_no_origin_is_treated_as_channels_treats_it(any_host, settings):
    cookie = staff_cookie()
    assert handshake(host="vending.local", origin=None, cookie=cookie)
    settings.ALLOWED_HOSTS = ["vending.local"]
    assert not handshake(host="vending.local", origin=None, cookie=cookie)


def test_with_named_hosts_only_their_pages_open_the_feed(any_host, settings):
    settings.ALLOWED_HOSTS = ["vending.local", "localhost"]
    cookie = staff_cookie()
    assert handshake(host="vending.local", origin="https://vending.local", cookie=cookie)
    assert handshake(host="vending.local", origin="http://localhost:5000", cookie=cookie)
    assert not handshake(host="vending.local", origin="https://evil.example", cookie=cookie)
    # A Host that is not allowed makes nothing "same site".
    assert not handshake(host="evil.example", origin="https://evil.example", cookie=cookie)


def handshake_status(port: int, origin: str) -> int:
    socket = WebSocket(port, headers={"Origin": origin})
    socket.close()
    return socket.status


@pytest.mark.system
def test_the_server_refuses_the_handshake_of_another_sites_page():
    port = free_port()
    server = start_server(
        port,
        ALLOWED_HOSTS="*",
        DASHBOARD_PUBLIC="true",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=server)
        assert handshake_status(port, "https://evil.example") == 403
        assert handshake_status(port, f"http://127.0.0.1:{port}") == 101
    finally:
        code, output = stop(server)
    assert code == 0, output
    assert "Traceback" not in output, output
