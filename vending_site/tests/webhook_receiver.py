"""A real HTTP receiver on 127.0.0.1 for the webhook tests: it verifies every request's
Standard Webhooks signature with the ``standardwebhooks`` library and keeps what arrived."""

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

from tests.scratch.net import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: object = None
    at: float = field(default_factory=time.time)  # when it arrived (wall clock)


@dataclass
class Receiver:
    """``status`` is what it answers, ``delay`` how long it sits on each request first;
    ``location`` makes it redirect. ``stop()`` closes the port; ``start()`` opens it again."""

    secret: str = ""
    status: int = 204
    delay: float = 0.0
    location: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    tls: object = None  # an ssl.SSLContext to serve https with
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                payload, verified = None, False
                if receiver.secret:  # none: a benchmark's receiver, counting arrivals only
                    try:
                        payload = Webhook(receiver.secret).verify(body, headers)
                        verified = True
                    except WebhookVerificationError:
                        pass
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, verified, payload))
                if receiver.delay:
                    receiver._released.wait(receiver.delay)
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._released = threading.Event()

    def ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get("webhook-id", "") for r in self.received]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(
            f"{count} webhooks not received within {timeout} s: got {len(self.received)}"
        )


class SmtpInbox:
    """An aiosmtpd handler keeping every envelope it is sent (``messages``): the real SMTP
    server of the e-mail tests (``aiosmtpd.controller.Controller(SmtpInbox(), ...)``)."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"
