"""Sending one message to one endpoint: a signed webhook, an e-mail or an Apprise notification.

Each sender returns an :class:`Outcome` and raises nothing a receiver can cause: a refused
URL, a timeout, a reset connection or a 500 are an outcome with an error, which the notifier
records as an attempt and retries. The webhook sender connects to an address it checked
itself (:mod:`vending_site.notify.ssrf`), follows no redirect (a 3xx is a failure), gives up
after ``NOTIFY_TIMEOUT`` seconds of connecting or of silence, cuts off an exchange still going
after :func:`exchange_budget` seconds (a receiver trickling its answer must not outlive the
delivery's lease), and reads at most :data:`RESPONSE_CAP` bytes of the answer.
"""

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from standardwebhooks import Webhook

from . import ssrf
from .models import Endpoint, EndpointKind, Message

RESPONSE_CAP = 64 * 1024  # bytes of a receiver's answer read; the rest is dropped
USER_AGENT = "vending-webhooks/1"
ERROR_LENGTH = 500  # DeliveryAttempt.error


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None
    error: str = ""


def _failed(error: str, status: int | None = None) -> Outcome:
    return Outcome(False, status, error[:ERROR_LENGTH])


def body_bytes(message: Message) -> bytes:
    """The webhook body exactly as signed and sent (compact JSON, UTF-8)."""
    return json.dumps(message.body(), separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(
    *, secret: str, msg_id: str, payload: bytes, at: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``payload``: the id is the message's (the same
    on every retry), the timestamp this attempt's, the signature ``v1,<base64 HMAC-SHA256>``."""
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, payload),
    }


def _connect(parts, timeout: float) -> socket.socket:
    """A socket connected to a checked address of the URL's host (TLS verified against the
    host name for https). Raises :class:`ssrf.UnsafeURL` or ``OSError``."""
    host, port = parts.hostname, ssrf.port_of(parts)
    last_error: OSError | None = None
    for family, address in ssrf.resolve_checked(host, port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((str(address), port))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        if parts.scheme == "https":
            context = ssl.create_default_context()
            try:
                return context.wrap_socket(sock, server_hostname=host)
            except (OSError, ssl.SSLError):
                sock.close()
                raise
        return sock
    raise last_error or OSError(f"cannot connect to {host}")


def _read_capped(response: http.client.HTTPResponse, deadline: float) -> bytes:
    chunks, size = [], 0
    while size < RESPONSE_CAP and time.monotonic() < deadline:
        chunk = response.read1(min(16384, RESPONSE_CAP - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def exchange_budget() -> float:
    """Seconds a webhook's request and answer may take once connected, however the receiver
    paces its bytes: three timeouts, and at most half the lease, so a send is over before
    another notifier may claim the delivery again."""
    return min(3 * settings.NOTIFY_TIMEOUT, settings.NOTIFY_LEASE_SECONDS / 2)


def _cut_off(sock: socket.socket, expired: threading.Event) -> None:
    expired.set()
    try:  # the plain socket's shutdown (not TLS's): a blocked read then returns at once
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def post_webhook(*, url: str, secret: str, msg_id: str, payload: bytes) -> Outcome:
    """POST ``payload`` to ``url``, signed; a 2xx answer is success."""
    timeout = settings.NOTIFY_TIMEOUT
    try:
        parts = ssrf.parse(url)
        sock = _connect(parts, timeout)
    except ssrf.UnsafeURL as exc:
        return _failed(f"refused: {exc}")
    except ssl.SSLError as exc:
        return _failed(f"TLS failed: {exc}")
    except TimeoutError:
        return _failed(f"no connection within {timeout:g} s")
    except OSError as exc:
        return _failed(f"cannot connect: {exc}")
    connection = http.client.HTTPConnection(parts.hostname, ssrf.port_of(parts), timeout=timeout)
    connection.sock = sock
    budget, expired = exchange_budget(), threading.Event()
    watchdog = threading.Timer(budget, _cut_off, args=(sock, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        headers = {
            "Host": parts.netloc,
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            "User-Agent": USER_AGENT,
            **signed_headers(secret=secret, msg_id=msg_id, payload=payload),
        }
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(payload)
        response = connection.getresponse()
        answer = _read_capped(response, time.monotonic() + timeout)
    except TimeoutError:
        return _failed(f"no answer within {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            return _failed(f"no complete answer within {budget:g} s")
        return _failed(f"{type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()
        connection.close()
    if expired.is_set():  # cut off mid-answer: what was parsed is not a whole answer
        return _failed(f"no complete answer within {budget:g} s", response.status)
    status = response.status
    if 200 <= status < 300:
        return Outcome(True, status)
    if 300 <= status < 400:
        where = response.getheader("Location", "")[:200]
        return _failed(f"HTTP {status}: redirects are not followed ({where})", status)
    text = answer[:200].decode("utf-8", "replace").strip()
    return _failed(f"HTTP {status}" + (f": {text}" if text else ""), status)


# --- People: e-mail and Apprise -----------------------------------------------------------


def render(message: Message) -> tuple[str, str]:
    """A title and a plain-text body for people, from the event."""
    data: dict[str, Any] = message.data if isinstance(message.data, dict) else {}
    event = message.event_type
    if data.get("title"):
        title = str(data["title"])
    elif event.startswith("vend."):
        where = f" on {data['machine']}" if data.get("machine") else ""
        title = f"Vend {data.get('id', '?')} {data.get('state', event[5:])}{where}"
    else:
        title = f"{event} {message.subject}".strip()
    lines = [f"{event} at {message.created_at:%Y-%m-%d %H:%M:%S %Z}"]
    if message.subject:
        lines.append(f"Subject: {message.subject}")
    lines += [f"{key}: {value}" for key, value in data.items() if key != "title"]
    lines.append(f"Message id: {message.msg_id}")
    return f"[vending] {title}"[:200], "\n".join(lines)


def recipients_of(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


def send_email(*, recipients: list[str], title: str, body: str) -> Outcome:
    if not recipients:
        return _failed("no recipients")
    try:
        send_mail(title, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
        return _failed(f"{type(exc).__name__}: {exc}")
    return Outcome(True)


class _ThreadLog(logging.Handler):
    """Collects the warnings Apprise logs in the thread that asked (threads send at once)."""

    local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None and len(lines) < 10:
            lines.append(record.getMessage())


_apprise_log = _ThreadLog(level=logging.WARNING)
_apprise_log_lock = threading.Lock()


def send_apprise(*, url: str, title: str, body: str) -> Outcome:
    import apprise  # loads its plugins: only the notifier pays for it

    with _apprise_log_lock:
        logger = logging.getLogger("apprise")
        if _apprise_log not in logger.handlers:
            logger.addHandler(_apprise_log)
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return _failed("not a valid Apprise URL")
    _ThreadLog.local.lines = []
    try:
        sent = notifier.notify(title=title, body=body)
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is one failed attempt
        return _failed(f"Apprise failed: {type(exc).__name__}: {exc}")
    finally:
        lines, _ThreadLog.local.lines = _ThreadLog.local.lines, None
    if sent:
        return Outcome(True)
    return _failed("Apprise could not send: " + (" ".join(lines) or "no reason given"))


def send(endpoint: Endpoint, message: Message) -> Outcome:
    """Send ``message`` to ``endpoint`` once, whatever its kind."""
    if endpoint.kind == EndpointKind.WEBHOOK:
        return post_webhook(
            url=endpoint.url,
            secret=endpoint.secret,
            msg_id=message.msg_id,
            payload=body_bytes(message),
        )
    title, body = render(message)
    if endpoint.kind == EndpointKind.EMAIL:
        return send_email(recipients=recipients_of(endpoint.recipients), title=title, body=body)
    if endpoint.kind == EndpointKind.APPRISE:
        return send_apprise(url=endpoint.url, title=title, body=body)
    return _failed(f"unknown endpoint kind {endpoint.kind!r}")
