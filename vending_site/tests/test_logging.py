"""Structured logs: JSON lines with request, device and transaction context, and no leaks."""

import asyncio
import io
import json
import logging
import os
import subprocess
import sys

import pytest
import structlog
from django.conf import settings
from django.http import HttpResponse

from vending_site.http.middleware import RequestIdMiddleware
from vending_site.observability import logging as vlog

DEVICE = "ESP32_6CC8404FE03C"


@pytest.fixture
def log_lines():
    """Every record of the process, rendered by the project's JSON formatter, as dicts."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(vlog.make_formatter("json"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    quiet = logging.getLogger("django.db.backends")
    quiet_level = quiet.level
    quiet.setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)
    quiet.setLevel(quiet_level)
    structlog.contextvars.clear_contextvars()


def test_stdlib_and_structlog_loggers_both_write_one_json_object_per_line(log_lines):
    logging.getLogger("django.request").warning("Bad Request: %s", "/x")
    vlog.get_logger("vending.test").info("hello", answer=42)
    first, second = log_lines()
    assert first["event"] == "Bad Request: /x"
    assert first["logger"] == "django.request"
    assert first["level"] == "warning"
    assert first["timestamp"].endswith("Z")
    assert second == {**second, "event": "hello", "answer": 42, "logger": "vending.test"}


def test_the_settings_build_a_json_config_by_default(settings):
    assert settings.LOG_FORMAT == "json"
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        vlog.logging_config(fmt="xml", level="INFO")


def test_a_device_poll_line_carries_device_id_and_request_id(client, log_lines, online_device):
    response = client.get(f"/esp32/commands/{DEVICE}", HTTP_X_REQUEST_ID="req-poll-1")
    assert response.status_code == 200
    assert response["X-Request-ID"] == "req-poll-1"
    polls = [line for line in log_lines() if line["event"] == "device_poll"]
    assert polls, log_lines()
    assert polls[0]["device_id"] == DEVICE
    assert polls[0]["request_id"] == "req-poll-1"


def test_a_vend_transition_line_carries_transaction_id(
    client, client_for, user, log_lines, online_device
):
    vend = client_for(user).post("/api/v1/vend/2", {}, format="json", HTTP_X_REQUEST_ID="r-1")
    assert vend.status_code == 202
    client.get(f"/esp32/commands/{DEVICE}", HTTP_X_REQUEST_ID="r-2")
    sent = [line for line in log_lines() if line["event"] == "vend_transition"]
    assert sent, log_lines()
    assert sent[0]["transaction_id"] == vend.json()["id"]
    assert sent[0]["to_state"] == "sent"
    assert sent[0]["device_id"] == DEVICE and sent[0]["request_id"] == "r-2"


def test_context_is_cleared_after_the_request(client, log_lines, online_device):
    client.get(f"/esp32/commands/{DEVICE}", HTTP_X_REQUEST_ID="req-gone")
    logging.getLogger("vending.after").info("later")
    later = log_lines()[-1]
    assert later["event"] == "later"
    assert "request_id" not in later and "device_id" not in later


@pytest.mark.parametrize("header", ["has spaces", "x" * 200, "new\nline", ""])
def test_an_insane_request_id_is_replaced_by_a_generated_one(client, db, header):
    response = client.get("/health", HTTP_X_REQUEST_ID=header)
    generated = response["X-Request-ID"]
    assert generated != header
    assert len(generated) == 32 and int(generated, 16) >= 0


def test_every_response_gets_a_request_id(client, db):
    first = client.get("/status")["X-Request-ID"]
    second = client.get("/status")["X-Request-ID"]
    assert first and second and first != second


def test_concurrent_async_requests_keep_their_own_request_id(rf, log_lines):
    log = vlog.get_logger("vending.async")

    async def view(request):
        await asyncio.sleep(0.01)  # let the other request run in between
        log.info("inside", expected=request.META["HTTP_X_REQUEST_ID"])
        await asyncio.sleep(0.01)
        log.info("inside", expected=request.META["HTTP_X_REQUEST_ID"])
        return HttpResponse("ok")

    middleware = RequestIdMiddleware(view)

    async def both():
        return await asyncio.gather(
            *(middleware(rf.get("/", HTTP_X_REQUEST_ID=f"async-{n}")) for n in range(5))
        )

    responses = asyncio.run(both())
    assert [r["X-Request-ID"] for r in responses] == [f"async-{n}" for n in range(5)]
    inside = [line for line in log_lines() if line["event"] == "inside"]
    assert len(inside) == 10
    assert all(line["request_id"] == line["expected"] for line in inside)


@pytest.mark.system
def test_a_real_process_logs_json_lines_to_stderr_through_the_settings():
    """The wiring itself: Django applies settings.LOGGING in a fresh process, and a plain
    stdlib logger and a structlog logger both come out as JSON on stderr."""
    code = (
        "import logging; from vending_site.observability.logging import get_logger, bind;"
        "bind(device_id='ESP32_AABBCCDDEEFF');"
        "logging.getLogger('vending.check').warning('plain %s', 'line');"
        "get_logger('vending.check').info('structured', n=1)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=settings.BASE_DIR,
        env={**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["logger"] == "vending.check"]
    assert [line["event"] for line in ours] == ["plain line", "structured"]
    assert all(line["device_id"] == "ESP32_AABBCCDDEEFF" for line in ours)
    assert ours[1]["n"] == 1 and ours[1]["level"] == "info"
