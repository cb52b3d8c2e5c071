"""The idle answer to a device poll as the full path sends it, for the paths that give it
without a Django request: a kept machine's poll answered from memory (``kept_poll``) and a
poll shed under overload (``shed_poll``). The same headers (the view's response, its
``Allow``, ``SecurityMiddleware``'s), the same ``X-Request-ID`` rule, the same metrics."""

from __future__ import annotations

import time
from random import getrandbits
from types import SimpleNamespace

from django.middleware.security import SecurityMiddleware

from vending_site.http.middleware import HEADER as REQUEST_ID_HEADER
from vending_site.http.middleware import is_sane_request_id
from vending_site.observability import metrics

STATUS = "200 OK"

Answer = tuple[str, list[tuple[str, str]], bytes]


def is_secure(environ: dict, proxy_ssl_header: tuple[str, str] | None) -> bool:
    """``HttpRequest.is_secure()`` of the environ, as Django decides it."""
    if proxy_ssl_header:
        header, secure_value = proxy_ssl_header
        value = environ.get(header)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return environ.get("wsgi.url_scheme") == "https"


def view_answer(view, secure: bool) -> tuple[list[tuple[str, str]], bytes]:
    """The headers (but the request id) and body of ``view``'s idle answer as the full path
    sends it; callers keep it (it costs a response and the middleware)."""
    response = view.answer(None)
    response["Allow"] = ", ".join(method.upper() for method in view.http_method_names)
    request = SimpleNamespace(is_secure=lambda: secure)
    SecurityMiddleware(lambda request: response).process_response(request, response)
    return list(response.items()), response.content


def give(
    environ: dict,
    *,
    headers: list[tuple[str, str]],
    body: bytes,
    secure: bool,
    started: float,
    request_metrics: metrics.ViewRequestMetrics,
    counter,
) -> Answer:
    """The WSGI answer ``(status, headers, body)`` with the request's id (the sender's when
    sane, else a fresh one, as the middleware decides), counted as the view's request and
    under ``counter``."""
    request_id = environ.get("HTTP_X_REQUEST_ID", "")
    if not is_sane_request_id(request_id):
        request_id = f"{getrandbits(128):032x}"  # unique, as uuid4().hex, without a syscall
    request_metrics.record(
        secure=secure,
        status=200,
        charset="utf-8",
        request_bytes=0,
        response_bytes=len(body),
        seconds=time.perf_counter() - started,
        ajax=environ.get("HTTP_X_REQUESTED_WITH") == "XMLHttpRequest",
        tally=metrics.tally,
    )
    metrics.tally.add([counter], [])
    return STATUS, [*headers, (REQUEST_ID_HEADER, request_id)], body


def for_asgi(answer: Answer) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A WSGI answer as the ASGI shortcuts return it: status code, byte headers, body."""
    status, headers, body = answer
    return (
        int(status[:3]),
        [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        body,
    )
