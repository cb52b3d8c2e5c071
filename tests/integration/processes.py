"""Start the project's own management commands as real processes against the test database."""

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def test_database_url() -> str:
    """A DATABASE_URL naming the database this test run uses (so a child process shares it)."""
    params = connection.settings_dict
    if params["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=test_database_url(), PYTHONUNBUFFERED="1", **extra)
    return env


def run_python(args: list[str], env: dict[str, str], timeout: float = 60.0) -> str:
    """``python ARGS`` in a child in the project's directory; its stdout. Fails with the
    child's stderr when it exits non-zero."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def start_command(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_server(port: int, **env: str) -> subprocess.Popen:
    """The web server as ``make run`` starts it (``manage.py serve``: Daphne) on
    127.0.0.1:``port``, without an access log; ``env`` adds settings."""
    return start_command(
        "serve", "--host", "127.0.0.1", "--port", str(port), "--access-log", "/dev/null", **env
    )


def read_until(process: subprocess.Popen, needle: str, timeout: float = 15.0) -> str:
    """Lines of the child's output up to the first one containing ``needle``.

    Waits with ``select`` so a child that is alive but silent cannot block past ``timeout``.
    """
    deadline = time.monotonic() + timeout
    seen = []
    stream = process.stdout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        line = stream.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not printed within {timeout} s; output:\n{''.join(seen)}")


def stop(process: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str]:
    """SIGTERM the child; return its exit code and the rest of its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on right now (``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """``condition()``'s first truthy result, polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_http(url: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers 200 (bounded); fails at once if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    opener = loopback_opener()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:  # URLError is an OSError
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def loopback_opener():
    """A urllib opener that ignores proxy variables: test traffic stays on loopback."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Headers(dict):
    """Response headers by name in any case, as HTTP means them (granian sends every name in
    lower case, Daphne as the application wrote it)."""

    def __init__(self, pairs) -> None:
        super().__init__((name.lower(), value) for name, value in pairs)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name) -> bool:
        return super().__contains__(name.lower())

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


def request(url: str, method: str, path: str, body=None, headers=None, timeout=10.0):
    """A JSON request to ``http://host:port`` in one connection: ``(status, headers, parsed
    body)``, the headers by name in any case (:class:`Headers`); connection errors
    propagate."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(
            method,
            path,
            body=json.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json", "Connection": "close", **(headers or {})},
        )
        response = connection.getresponse()
        text = response.read().decode()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = {"raw": text[:300]}
        return response.status, Headers(response.getheaders()), parsed
    finally:
        connection.close()
