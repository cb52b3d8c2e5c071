"""Loopback networking for the scratch stack: ports, one small HTTP client, bounded waits."""

import http.client
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Callable
from urllib.parse import urlsplit


class StackError(AssertionError):
    """A scratch process or service that did not come up (an AssertionError, so a test
    reports it as a failure with its message; the benchmarks record it as the scenario's
    error)."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on right now (``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """``condition()``'s first truthy result, polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise StackError(f"timed out after {timeout} s waiting for {what}")


def loopback_opener():
    """A urllib opener that ignores proxy variables: test traffic stays on loopback."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class Headers(dict):
    """Response headers by name in any case, as HTTP means them (granian sends every name in
    lower case; Daphne wrote them as the application did)."""

    def __init__(self, pairs) -> None:
        super().__init__((name.lower(), value) for name, value in pairs)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name) -> bool:
        return super().__contains__(name.lower())

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


class Client:
    """One persistent HTTP/1.1 connection to ``base_url`` (loopback only; reopened after an
    error). Bodies go out as JSON. Not thread-safe: give each thread its own."""

    def __init__(self, base_url: str, timeout: float = 10.0, headers: dict | None = None):
        parts = urlsplit(base_url)
        if not _loopback(parts.hostname):
            raise ValueError(f"scratch traffic stays on loopback, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.connection: http.client.HTTPConnection | None = None

    def exchange(
        self, method: str, path: str, body: object = None, headers: dict | None = None
    ) -> tuple[int, Headers, bytes]:
        """``(status, headers, body)``; a connection error propagates after one retry on a
        fresh connection when the kept one turned out to be closed by the server."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", **self.headers, **(headers or {})}
        for attempt in (1, 2):
            fresh = self.connection is None
            if fresh:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
            try:
                self.connection.request(method, path, body=data, headers=all_headers)
                response = self.connection.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, Headers(response.getheaders()), payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt == 2:
                    raise
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def request(
        self, method: str, path: str, body: object = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """``(status, body)``."""
        status, _, payload = self.exchange(method, path, body, headers)
        return status, payload

    def json(self, method: str, path: str, body: object = None, headers: dict | None = None):
        """``(status, parsed body)``, ``None`` for an empty body."""
        status, payload = self.request(method, path, body, headers)
        return status, (json.loads(payload) if payload.strip() else None)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def request(url: str, method: str, path: str, body=None, headers=None, timeout=10.0):
    """A JSON request to ``http://host:port`` in one connection: ``(status, headers, parsed
    body)``, the headers by name in any case (:class:`Headers`), a body that is not JSON as
    ``{"raw": <its first 300 characters>}``; connection errors propagate."""
    client = Client(url, timeout=timeout, headers={"Connection": "close"})
    try:
        status, response_headers, payload = client.exchange(method, path, body, headers)
    finally:
        client.close()
    text = payload.decode()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = {"raw": text[:300]}
    return status, response_headers, parsed


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Until ``url`` (a loopback URL) answers 200; fails at once if ``process`` exits."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"{url}: the server exited with {process.returncode}")
        client = Client(f"http://{parts.hostname}:{parts.port}", timeout=2)
        try:
            status, _ = client.request("GET", parts.path or "/")
            if status == 200:
                return
        except OSError:
            pass
        finally:
            client.close()
        time.sleep(0.1)
    raise StackError(f"{url} did not answer 200 within {timeout} s")
