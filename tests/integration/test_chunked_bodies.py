"""A body sent ``Transfer-Encoding: chunked`` (no Content-Length) meets the same size limit
as any other, on both real servers: granian's WSGI workers (``deploy/web.py``, production)
and ``manage.py serve`` (granian, ASGI: the embedded default). Over the limit it is the JSON
413 naming the limit, with no traceback in the server's log; under it, it is read like a
body with a length."""

import json
import signal
import socket
import subprocess
import sys

import pytest

from tests.scratch import ROOT
from tests.scratch.children import child_env
from tests.scratch.net import free_port, wait_http
from tests.scratch.stack import web_argv

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 2048
MAC = "6C:C8:40:4F:E0:3C"
TOO_LARGE = {
    "detail": f"The request body is too large: at most {LIMIT} bytes are accepted.",
    "code": "request_too_large",
}
SERVER_ENV = {
    "MAX_REQUEST_BODY": str(LIMIT),
    "DEVICE_THROTTLE": "100000/min",
    "DEVICE_ADDRESS_THROTTLE": "100000/min",
}


def send_chunked(port: int, path: str, body: bytes, chunk: int = 1024) -> tuple[int, dict]:
    """POST ``body`` in chunks of ``chunk`` bytes on a raw socket; (status, parsed JSON).

    The server may answer (and close) before the last chunk: a send that fails then is
    expected, the answer is still read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            sock.sendall(head.encode())
            for start in range(0, len(body), chunk):
                part = body[start : start + chunk]
                sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        answer = b""
        for _ in range(1000):  # bounded: the server closes (Connection: close)
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload = dechunk(payload)
    return status, json.loads(payload) if payload.strip() else None


def dechunk(payload: bytes) -> bytes:
    out = b""
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, payload = out + rest[:size], rest[size + 2 :]
    return out


def padded(document: dict, size: int) -> bytes:
    return json.dumps({**document, "pad": "x" * size}).encode()


class Server:
    """A real server on a free loopback port, its output in a file."""

    def __init__(self, kind: str, directory) -> None:
        self.port = free_port()
        self.log = directory / f"{kind}.log"
        bind = f"127.0.0.1:{self.port}"
        if kind == "granian":
            argv = web_argv(bind, "--workers", "1", "--threads", "2")
        else:
            argv = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1"]
            argv += ["--port", str(self.port)]
        env = child_env(PROMETHEUS_MULTIPROC_DIR=str(directory / "metrics"), **SERVER_ENV)
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


@pytest.fixture(params=["granian", "serve"])
def server(request, tmp_path):
    server = Server(request.param, tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{server.port}/health", timeout=60, process=server.process)
        yield server
    finally:
        code = server.stop()
    assert code == 0, server.output()[-3000:]


@pytest.mark.parametrize(
    "path", ["/esp32/confirm", "/esp32/register", "/esp32/wifi/confirm", "/api/v1/vend/1"]
)
def test_an_oversized_chunked_body_is_the_json_413_naming_the_limit(server, path):
    status, body = send_chunked(server.port, path, padded({"device_id": MAC, "slot": 1}, 4 * LIMIT))

    assert (status, body) == (413, TOO_LARGE)


def test_an_oversized_chunked_body_leaves_no_traceback_in_the_log(server):
    for path in ("/esp32/confirm", "/api/v1/vend/1"):
        assert send_chunked(server.port, path, padded({}, 4 * LIMIT))[0] == 413
    assert send_chunked(server.port, "/esp32/confirm", b"x" * (LIMIT + 1))[0] == 413

    output = server.output()
    assert "Traceback" not in output
    assert "RequestDataTooBig" not in output


def test_a_chunked_confirmation_under_the_limit_is_read_like_any_other(server):
    status, body = send_chunked(
        server.port, "/esp32/confirm", padded({"device_id": MAC, "slot": 1}, 10)
    )

    assert status == 200  # not "device_id: This field is required" (the body read as empty)
    assert body["status"] == "ignored"  # nothing was delivered to confirm
