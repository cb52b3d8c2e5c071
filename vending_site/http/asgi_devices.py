"""The firmware's requests under an ASGI server (``manage.py serve``), in front of the router.

:class:`DeviceFront` wraps the ASGI application (Channels' router: Django's ASGI handler for
HTTP, the dashboard's WebSocket). A request for one of the firmware's paths
(``handlers.DEVICE_PATH``) does not go to Django's ASGI handler:

1. a bodiless ``GET`` is first offered to the *shortcuts*, in order: each is an async
   callable taking the ASGI ``scope`` and returning ``(status, headers, body)`` (headers as
   ASGI's ``[(bytes, bytes)]``) when it answers the request itself, or ``None`` to leave it
   to the next one. This is the ASGI twin of ``vending_site.wsgi``'s shortcuts; a shortcut
   runs on the event loop, so it must not block (no database call, no lock held for long);
2. otherwise :class:`SyncDeviceApp` answers it with a WSGI application (``vending_site.asgi``
   gives it ``handlers.DeviceApplication``: the WSGI application's own shortcuts, then
   Django's synchronous handler with ``DEVICE_MIDDLEWARE``), called once per request in the
   thread where asgiref runs every thread-sensitive call (Django's own synchronous views and
   middleware under ASGI, Channels' ``database_sync_to_async``), so SQLite is still used
   from one thread.

Why not Django's ASGI handler for these: it runs the synchronous middleware and the
synchronous device views each through ``sync_to_async`` (several thread hops per request),
plus ``MIDDLEWARE``'s browser half: about 7 ms of CPU an idle poll against 0.6 ms here
(``bench/poll_ceiling.py``'s embedded phase; docs/architecture.md, "The web servers").
"""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async

from vending_site.http.limits import max_body
from vending_site.http.queue_wait import ARRIVED, HopQueue

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
Shortcut = Callable[[dict], Awaitable[Answer | None]]
ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]

# Request headers Django drops under ASGI too: with "_" a header could pose as another
# ("X_Forwarded_For" and "X-Forwarded-For" both become HTTP_X_FORWARDED_FOR).
_AMBIGUOUS = b"_"


def has_body(scope: dict) -> bool:
    """Whether the request declares a body (a length other than 0, or a transfer coding)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
        if name == b"transfer-encoding":
            return True
    return False


class DeviceFront:
    """The ASGI application of ``manage.py serve``: the firmware's paths to the shortcuts,
    then ``device_app``; everything else (WebSockets included) to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        device_path: re.Pattern,
        device_app: ASGIApp,
        shortcuts: Iterable[Shortcut] = (),
    ) -> None:
        self.app = app
        self.device_path = device_path
        self.device_app = device_app
        self.shortcuts = list(shortcuts)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not self.device_path.fullmatch(scope["path"]):
            return await self.app(scope, receive, send)
        if self.shortcuts and scope["method"] == "GET" and not has_body(scope):
            for shortcut in self.shortcuts:
                answer = await shortcut(scope)
                if answer is not None:
                    status, headers, body = answer
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": body})
                    return None
        return await self.device_app(scope, receive, send)


def environ_for(scope: dict, body: bytes) -> dict[str, Any]:
    """The WSGI ``environ`` of an ASGI HTTP request whose body was read (``body``)."""
    client = scope.get("client") or ("", 0)
    server = scope.get("server") or ("unknown", 0)
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode().decode("latin-1"),
        # PEP 3333: the path's bytes as latin-1 (Django decodes them as UTF-8 again).
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        # The stream ends with the body: vending_site.http.limits may read past the declared
        # length of a chunked body (at most one byte past the limit, see read_body).
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        if _AMBIGUOUS in raw_name:
            continue
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            name = f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    return environ


async def read_body(receive: Callable, limit: int) -> bytes | None:
    """The request's body, read up to one byte past ``limit`` (0: no limit), which is enough
    for ``RequestSizeLimitMiddleware`` to answer 413; ``None`` if the client went away."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body") or (limit and size > limit):
            return b"".join(chunks)


def _respond(wsgi_app: Callable, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run ``wsgi_app`` to the end of its response (``close()`` included: Django sends
    ``request_finished`` there, which recycles database connections)."""
    started: list = []

    def start_response(status: str, headers: list, exc_info=None):
        started[:] = [status, headers]
        return lambda data: None  # Django never writes through it

    response = wsgi_app(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        if hasattr(response, "close"):
            response.close()
    status, headers = started
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return int(status.split(None, 1)[0]), encoded, body


def _respond_timed(wsgi_app: Callable, environ: dict, queue: HopQueue):
    """:func:`_respond`, its time told to ``queue``."""
    queue.started += 1
    started = time.monotonic()
    try:
        return _respond(wsgi_app, environ)
    finally:
        queue.served(time.monotonic() - started)


# The device thread's queue of the process (devices.api.shed_poll reads it on the loop).
device_queue = HopQueue()


class SyncDeviceApp:
    """An ASGI application answering each request with the synchronous ``wsgi_app`` (a
    Django handler), in asgiref's thread-sensitive thread: one thread hop per request.

    Each request is counted in ``queue`` until the thread begins it, and its ``environ``
    carries the time it was handed over (``queue_wait.ARRIVED``), so what runs
    in the thread knows how long it waited (``queue_wait.waited``)."""

    def __init__(self, wsgi_app: Callable, queue: HopQueue = device_queue) -> None:
        self.respond = sync_to_async(_respond_timed, thread_sensitive=True)
        self.wsgi_app = wsgi_app
        self.queue = queue

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        body = await read_body(receive, max_body())
        if body is None:
            return
        environ = environ_for(scope, body)
        environ[ARRIVED] = time.monotonic()
        self.queue.entered += 1
        status, headers, content = await self.respond(self.wsgi_app, environ, self.queue)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
