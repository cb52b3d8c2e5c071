"""Request id: every request gets one, every log line inside it carries it, the answer echoes it.

The id is taken from the client's (or proxy's) ``X-Request-ID`` header when that header is
sane (1-128 characters of letters, digits and ``._:-``, so a client can neither inject log
content nor blow up a log line); otherwise a new UUID4 hex is generated. It is bound with
structlog's contextvars and cleared when the request is finished (``request_finished``,
sent when the server closes the response) rather than when the middleware returns, so
Django's own "Bad Request: ..." line, written by the handler after the middleware chain,
still carries it. It is also cleared when a request starts, so a thread that serves the
next request (WSGI, the test client) never inherits the previous one's values; under ASGI
each request is its own asyncio task with its own copy of the context anyway. The
middleware is sync- and async-capable, so the async vend view is not pushed into a thread.
"""

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.signals import request_finished

from vending_site.observability import logging as vlog

HEADER = "X-Request-ID"
_META_KEY = "HTTP_X_REQUEST_ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_for(request) -> str:
    candidate = request.META.get(_META_KEY, "")
    return candidate if is_sane_request_id(candidate) else uuid.uuid4().hex


def is_sane_request_id(candidate) -> bool:
    """Whether a client's ``X-Request-ID`` is kept (else the server makes one)."""
    return isinstance(candidate, str) and _SANE_ID.fullmatch(candidate) is not None


class RequestIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _start(self, request) -> str:
        vlog.clear()
        request_id = request_id_for(request)
        request.request_id = request_id
        vlog.bind(request_id=request_id)
        return request_id

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        request_id = self._start(request)
        response = self.get_response(request)
        response[HEADER] = request_id
        return response

    async def __acall__(self, request):
        request_id = self._start(request)
        response = await self.get_response(request)
        response[HEADER] = request_id
        return response


def _clear_log_context(**kwargs) -> None:
    vlog.clear()


request_finished.connect(_clear_log_context, dispatch_uid="vending_site.clear_log_context")
