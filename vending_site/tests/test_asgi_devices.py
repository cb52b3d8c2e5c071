"""The ASGI application of ``manage.py serve`` (vending_site/asgi.py): the firmware's requests
are offered to the ASGI shortcuts, then answered by Django's synchronous device handler
(vending_site/http/asgi_devices.py); everything else goes to Channels' router."""

import asyncio

import pytest
from asgiref.sync import async_to_sync

from vending_site.asgi import application
from vending_site.http.asgi_devices import DeviceFront, SyncDeviceApp, environ_for, read_body
from vending_site.http.handlers import DEVICE_PATH, DeviceApplication
from vending_site.tests.test_wsgi import call as call_wsgi

pytestmark = pytest.mark.django_db(transaction=True)

POLL = "/esp32/commands/ESP32_6CC8404FE03C"
NULL = (200, [(b"content-type", b"application/json")], b"null")


def scope_for(path: str, *, method: str = "GET", headers=(), kind: str = "http") -> dict:
    return {
        "type": kind,
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:5000"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5000),
        "scheme": "http",
        "http_version": "1.1",
    }


def call(app, scope: dict, chunks: tuple[bytes, ...] = (b"",)) -> tuple[int, dict, bytes]:
    """One request into ``app`` as an ASGI server makes it: (status, headers, body)."""
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    sent = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # no disconnect: the application stops listening

    async def send(message):
        sent.append(message)

    async_to_sync(app)(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent[1:])
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, body


class Recorder:
    """An ASGI application that answers 204 and remembers the paths it was given."""

    def __init__(self) -> None:
        self.paths = []

    async def __call__(self, scope, receive, send):
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def front(*shortcuts):
    router, device_app = Recorder(), Recorder()
    app = DeviceFront(router, device_path=DEVICE_PATH, device_app=device_app, shortcuts=shortcuts)
    return app, router, device_app


def test_a_shortcut_answers_an_idle_poll_before_the_device_handler():
    asked = []

    async def shortcut(scope):
        asked.append(scope["path"])
        return NULL

    app, router, device_app = front(shortcut)

    assert call(app, scope_for(POLL)) == (200, {"content-type": "application/json"}, b"null")
    assert asked == [POLL] and device_app.paths == [] and router.paths == []


def test_a_shortcut_that_declines_leaves_the_request_to_the_next_then_the_handler():
    asked = []

    async def declines(scope):
        asked.append("declines")
        return None

    app, _router, device_app = front(declines, declines)

    assert call(app, scope_for(POLL))[0] == 204
    assert asked == ["declines", "declines"] and device_app.paths == [POLL]


def test_only_a_bodiless_get_of_a_device_path_is_offered_to_the_shortcuts():
    async def must_not_be_asked(scope):
        raise AssertionError(f"offered {scope['method']} {scope['path']}")

    app, router, device_app = front(must_not_be_asked)
    call(app, scope_for("/esp32/confirm", method="POST"))
    call(app, scope_for(POLL, headers=[(b"content-length", b"2")]), (b"{}",))
    call(app, scope_for(POLL, headers=[(b"transfer-encoding", b"chunked")]))
    call(app, scope_for("/health"))
    call(app, scope_for(POLL + "/extra"))

    assert device_app.paths == ["/esp32/confirm", POLL, POLL]
    assert router.paths == ["/health", POLL + "/extra"]


def test_a_websocket_on_a_device_path_goes_to_the_router():
    app, router, device_app = front()

    async def connect():
        async def receive():
            return {"type": "websocket.connect"}

        async def send(message):
            pass

        await app(scope_for(POLL, kind="websocket"), receive, send)

    async_to_sync(connect)()
    assert router.paths == [POLL] and device_app.paths == []


def test_a_poll_is_answered_as_the_wsgi_application_answers_it(online_device):
    served = call(application, scope_for(POLL, headers=[(b"x-request-id", b"asgi-1")]))
    wsgi = call_wsgi(POLL, x_request_id="asgi-1")

    assert served[0] == wsgi[0] == 200 and served[2] == wsgi[2] == b"null"
    assert served[1] == wsgi[1]  # the same headers, the request id included


def test_the_device_lane_sends_a_wsgi_shortcuts_answer_made_without_django():
    def answers(environ):
        return "200 OK", [("Content-Type", "application/json"), ("X-Kept", "1")], b"null"

    lane = SyncDeviceApp(DeviceApplication([lambda environ: None, answers]))

    assert call(lane, scope_for(POLL)) == (
        200,
        {"content-type": "application/json", "x-kept": "1"},
        b"null",
    )


def test_the_rest_goes_to_djangos_asgi_handler():
    status, headers, _body = call(application, scope_for("/health"))

    assert status == 200 and headers["content-type"] == "application/json"


def test_a_device_request_with_a_body_over_the_limit_is_refused_with_413(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    chunks = (b'{"device_id": "', b"x" * 80, b"x" * 80, b'"}')
    scope = scope_for("/esp32/confirm", method="POST", headers=[(b"transfer-encoding", b"chunked")])

    status, _headers, body = call(application, scope, chunks)

    assert status == 413 and b"request_too_large" in body


def test_the_body_is_read_only_one_byte_past_the_limit():
    incoming = [{"type": "http.request", "body": b"x" * 60, "more_body": True}] * 10

    async def receive():
        return incoming.pop(0)

    body = async_to_sync(read_body)(receive, 100)

    assert len(body) == 120 and len(incoming) == 8


def test_the_environ_carries_the_request_as_a_wsgi_server_would():
    scope = scope_for(
        "/esp32/commands/ÄÖ",
        headers=[
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),
            (b"x_forwarded_for", b"6.6.6.6"),  # could pose as the one above: dropped
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
        ],
    )
    scope["query_string"] = b"a=1&b=%C3%A4"

    environ = environ_for(scope, b"{}")

    assert environ["PATH_INFO"] == "/esp32/commands/ÄÖ".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "a=1&b=%C3%A4"
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1,10.0.0.2"
    assert environ["CONTENT_TYPE"] == "application/json" and environ["CONTENT_LENGTH"] == "2"
    assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["wsgi.input"].read() == b"{}"
