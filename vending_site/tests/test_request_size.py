"""The request size limit for bodies that declare no length (``Transfer-Encoding: chunked``),
in-process through the WSGI application as granian calls it (tests/integration/
test_chunked_bodies.py sends them to the real granian, WSGI and ASGI)."""

import io
import json
import logging
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.exceptions import RequestDataTooBig
from django.test import RequestFactory

from vending_site.http.limits import RequestSizeLimitMiddleware
from vending_site.wsgi import application

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 1024
MAC = "6C:C8:40:4F:E0:3C"


def call_chunked(path: str, body: bytes, *, terminated: bool = True) -> tuple[int, dict]:
    """POST ``body`` as a server passes a chunked one: no CONTENT_LENGTH, the stream ending
    with the body (``wsgi.input_terminated``, as granian says)."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": terminated,
    }
    setup_testing_defaults(environ)
    answered = {}

    def start_response(status, headers, exc_info=None):
        answered["status"] = int(status.split()[0])

    response = application(environ, start_response)
    try:
        content = b"".join(response)
    finally:
        response.close()
    return answered["status"], json.loads(content)


@pytest.mark.parametrize("path", ["/esp32/confirm", "/esp32/register", "/api/v1/vend/1"])
def test_an_oversized_chunked_body_is_the_json_413_and_no_error_is_logged(path, settings, caplog):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    body = json.dumps({"device_id": MAC, "slot": 1, "pad": "x" * 4 * LIMIT}).encode()

    with caplog.at_level(logging.INFO):
        status, answer = call_chunked(path, body)

    assert status == 413
    assert answer == {
        "detail": f"The request body is too large: at most {LIMIT} bytes are accepted.",
        "code": "request_too_large",
    }
    assert not [record for record in caplog.records if record.exc_info]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_chunked_body_one_byte_over_the_limit_is_413(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT

    assert call_chunked("/esp32/confirm", b" " * (LIMIT + 1))[0] == 413


def test_a_chunked_body_under_the_limit_is_read_as_if_it_had_a_length(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    body = json.dumps({"device_id": MAC, "slot": 1, "success": True}).encode()

    status, answer = call_chunked("/esp32/confirm", body)

    assert status == 200  # before, the body read as empty: "device_id: This field is required"
    assert answer["status"] == "ignored"  # nothing was delivered to confirm


def test_a_chunked_body_a_server_cannot_end_is_refused_with_411(settings):
    status, answer = call_chunked("/esp32/confirm", b"{}", terminated=False)

    assert status == 411
    assert answer["detail"] == "A request body needs a Content-Length header."


def test_django_s_own_size_check_answers_the_json_413_not_a_400(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    request = RequestFactory().post("/esp32/confirm", b"{}", content_type="application/json")
    middleware = RequestSizeLimitMiddleware(lambda request: None)

    response = middleware.process_exception(request, RequestDataTooBig("too big"))

    assert response.status_code == 413
    assert json.loads(response.content)["code"] == "request_too_large"
