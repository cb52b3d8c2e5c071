"""Smoke test of the production topology through nginx, over real sockets on loopback.

The stack is started the way ``make prod-local`` starts it (``deploy/prod_local.py run``:
nginx, granian (``deploy/web.py``) for HTTP, ``manage.py serve`` for ``/ws/``, discovery,
bridge, sweeper under honcho), with free ports, a throwaway PostgreSQL database, a Redis db
of its own and a self-signed certificate this test makes with openssl. It does not use
pytest-django's test database: the stack's processes own their database, as in production.
``SCRATCH_DATABASE_PREFIX`` and ``SCRATCH_REDIS_URL`` pick the database name and the Redis
database (shared servers).
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.deploy import load_prod_local
from tests.scratch import ROOT
from tests.scratch.net import free_port

START_TIMEOUT = 180.0  # migrate + collectstatic on a fresh database, then the servers
STOP_TIMEOUT = 40.0  # deploy/web.py lets its requests finish for up to 20 s
REDIS_URL = os.environ.get("SCRATCH_REDIS_URL", "redis://127.0.0.1:6379/13")
ADMIN_PASSWORD = "smoke-test-Passw0rd!"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _skip_reason() -> str | None:
    for tool, package in (("nginx", "nginx-light"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not _reachable(5432):
        return "PostgreSQL is not running at 127.0.0.1:5432"
    if not _reachable(6379):
        return "Redis is not running at 127.0.0.1:6379"
    return None


def _processes_of(var: Path) -> list[int]:
    """Pids of processes started for this stack (their environment names its var dir)."""
    marker = f"PROD_LOCAL_DIR={var}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _drop_database(name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5
    )
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


class Stack:
    def __init__(self, var: Path, cert: Path, ports: dict[str, int]):
        self.var, self.cert, self.ports = var, cert, ports
        self.tls = ssl.create_default_context(cafile=str(cert))  # verifies against our cert

    def https(self, method: str, path: str, body=None, headers=None):
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.ports["https"], context=self.tls, timeout=15
        )
        return self._request(conn, method, path, body, headers)

    def http(self, port_name: str, method: str, path: str, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[port_name], timeout=15)
        return self._request(conn, method, path, body, headers)

    @staticmethod
    def _request(conn, method, path, body, headers):
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            response.body = response.read()
            return response
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack():
    reason = _skip_reason()
    if reason:
        print(f"SKIPPED the HTTPS smoke test: {reason}")
        pytest.skip(reason)

    var = Path(tempfile.mkdtemp(prefix="vending-prod-local-"))
    var.chmod(0o755)
    cert, key = var / "test-tls" / "cert.pem", var / "test-tls" / "key.pem"
    load_prod_local().ensure_certificate(cert, key)  # self-signed, for 127.0.0.1
    ports = {
        "https": free_port(),
        "http": free_port(),
        "device": free_port(),
        "web": free_port(),
        "ws": free_port(),
        "discovery": free_port(socket.SOCK_DGRAM),
    }
    database = f"{os.environ.get('SCRATCH_DATABASE_PREFIX', 'vending')}_smoke_{os.getpid()}"
    log_path = var / "stack.log"
    env = dict(os.environ, ADMIN_USERNAME="smoke-admin", ADMIN_PASSWORD=ADMIN_PASSWORD)
    command = [
        sys.executable,
        str(ROOT / "deploy" / "prod_local.py"),
        "run",
        "--var-dir",
        str(var),
        "--database-url",
        f"postgres://postgres@127.0.0.1:5432/{database}",
        "--redis-url",
        REDIS_URL,
        "--https-port",
        str(ports["https"]),
        "--http-port",
        str(ports["http"]),
        "--device-port",
        str(ports["device"]),
        "--discovery-port",
        str(ports["discovery"]),
        "--web-port",
        str(ports["web"]),
        "--ws-port",
        str(ports["ws"]),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(var, cert, ports)
    stack.log = log_path
    try:
        _wait_until_up(stack, process, log_path)
        yield stack
    finally:
        _stop(process, var)
        _drop_database(database)
        shutil.rmtree(var, ignore_errors=True)


def _wait_until_up(stack: Stack, process: subprocess.Popen, log_path: Path) -> None:
    """web and ws listen and /health answers through nginx over HTTPS (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prod-local exited with {process.returncode}:\n{log_path.read_text()}")
        if all(_reachable(stack.ports[name]) for name in ("web", "ws", "https")):
            try:
                if stack.https("GET", "/health").status == 200:
                    return
            except OSError:
                pass
        time.sleep(0.5)
    pytest.fail(f"the stack did not come up within {START_TIMEOUT} s:\n{log_path.read_text()}")


def _stop(process: subprocess.Popen, var: Path) -> None:
    """SIGTERM honcho (it stops its processes); anything left after that is killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for pid in _processes_of(var):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_https_health_answers_with_a_certificate_the_client_verifies(stack):
    response = stack.https("GET", "/health")
    assert response.status == 200
    assert json.loads(response.body)["status"] == "healthy"


def test_plain_http_is_redirected_permanently_to_https(stack):
    response = stack.http("http", "GET", "/admin/?next=x")
    assert response.status == 301
    assert response.getheader("Location") == (
        f"https://127.0.0.1:{stack.ports['https']}/admin/?next=x"
    )


def test_device_port_serves_a_poll_over_plain_http_without_redirect(stack):
    register = stack.http(
        "device",
        "POST",
        "/esp32/register",
        body=json.dumps({"device_id": "ESP32_AABBCCDDEEFF"}),
        headers={"Content-Type": "application/json"},
    )
    assert register.status == 200, register.body
    poll = stack.http("device", "GET", "/esp32/commands/ESP32_AABBCCDDEEFF")
    assert poll.status == 200, poll.body
    assert "Location" not in poll.headers
    assert poll.getheader("X-Request-ID")


def _polls_seen(stack) -> tuple[float, float]:
    """(polls examined, polls shed) on /metrics, read through the HTTPS port."""
    text = stack.https("GET", "/metrics").body.decode()
    examined = shed = 0.0
    for line in text.splitlines():
        if line.startswith('vending_device_polls_total{dialect="wifi_v2"}'):
            examined = float(line.split()[-1])
        elif line.startswith("vending_polls_shed_total{"):
            shed += float(line.split()[-1])
    return examined, shed


def test_device_port_stamps_the_arrival_itself_so_a_sender_cannot_age_its_poll(stack):
    # nginx sets X-Request-Start (devices/api/shed_poll.py sheds a poll that waited past
    # DEVICE_POLL_SHED_AFTER); a client's own value, from 1970, is replaced, never passed on.
    examined, shed = _polls_seen(stack)
    poll = stack.http(
        "device", "GET", "/esp32/commands/ESP32_AABBCCDDEEFF", headers={"X-Request-Start": "t=1"}
    )
    assert poll.status == 200, poll.body
    deadline = time.monotonic() + 10
    while _polls_seen(stack)[0] <= examined and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # two of the shed counter's write-behind periods (metrics.TALLY_SECONDS)

    assert _polls_seen(stack) == (examined + 1, shed)


def test_device_port_serves_nothing_but_the_device_protocol(stack):
    assert stack.http("device", "GET", "/health").status == 200
    # The v2.1 firmware probes /status on port 5000 before it accepts a discovered server.
    status = stack.http("device", "GET", "/status")
    assert status.status == 200, status.body
    assert "Location" not in status.headers
    response = stack.http("device", "GET", "/admin/")
    assert response.status == 404
    # Staff device management lives under /esp32/ too, but takes bearer tokens: not here.
    assert stack.http("device", "GET", "/esp32/devices/list").status == 404
    assert json.loads(response.body)["code"] == "not_found"


def test_django_itself_redirects_plain_http_that_bypasses_nginx_only_off_the_device_paths(stack):
    # Straight to granian with nginx's "http" marker: SECURE_SSL_REDIRECT applies, except to
    # the exempt device paths.
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["web"], timeout=15)
    headers = {"X-Forwarded-Proto": "http"}
    response = Stack._request(conn, "GET", "/admin/", None, headers)
    assert response.status == 301
    assert response.getheader("Location").startswith("https://")
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["web"], timeout=15)
    response = Stack._request(conn, "GET", "/esp32/commands/ESP32_AABBCCDDEEFF", None, headers)
    assert response.status == 200


def test_security_headers_are_present_once_on_https_answers(stack):
    response = stack.https("GET", "/admin/login/")
    assert response.status == 200
    expected = {
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    for name, value in expected.items():
        assert response.headers.get_all(name) == [value], name
    assert response.getheader("X-Request-ID")


def test_a_request_id_sent_by_the_client_is_kept(stack):
    response = stack.https("GET", "/health", headers={"X-Request-ID": "trace-123"})
    assert response.getheader("X-Request-ID") == "trace-123"
    # One Django would not log as given is replaced by nginx, so answer and log agree.
    response = stack.https("GET", "/health", headers={"X-Request-ID": "x" * 200})
    assert response.getheader("X-Request-ID") not in (None, "", "x" * 200)


def test_static_files_are_served_by_nginx(stack):
    response = stack.https("GET", "/static/admin/css/base.css")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/css"
    assert response.getheader("X-Content-Type-Options") == "nosniff"


TOO_LARGE = {
    "detail": "The request body is too large: at most 65536 bytes are accepted.",
    "code": "request_too_large",
}


def test_a_body_over_the_limit_is_refused_with_the_json_413(stack):
    response = stack.https(
        "POST",
        "/api/v1/vend/1",
        body=b"x" * (100 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    assert json.loads(response.body) == TOO_LARGE  # nginx's answer says what Django's says


@pytest.mark.parametrize(
    ("port_name", "path"), [("https", "/api/v1/vend/1"), ("device", "/esp32/confirm")]
)
def test_a_chunked_body_over_the_limit_is_refused_with_the_json_413(stack, port_name, path):
    if port_name == "https":
        conn = http.client.HTTPSConnection(
            "127.0.0.1", stack.ports["https"], context=stack.tls, timeout=15
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", stack.ports["device"], timeout=15)
    try:
        # No Content-Length: http.client frames the parts as chunks.
        parts = (b"x" * 1024 for _ in range(100))
        headers = {"Content-Type": "application/json"}
        try:
            conn.request("POST", path, body=parts, headers=headers, encode_chunked=True)
        except OSError:
            pass  # nginx may answer and close before the last chunk
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read()) == TOO_LARGE
    finally:
        conn.close()


# --- The edge: what nginx tells and accepts ------------------------------------------------


def test_nginx_names_no_version(stack):
    answers = [
        stack.https("GET", "/health"),
        stack.https("GET", "/static/no-such-file.css"),  # nginx's own error page
        stack.http("http", "GET", "/"),
        stack.http("device", "GET", "/admin/"),
    ]
    for response in answers:
        assert response.getheader("Server") == "nginx", response.getheader("Server")
        assert b"nginx/" not in response.body


def _handshake(stack: Stack, ciphers: str) -> str:
    """Handshake TLS 1.2 offering only ``ciphers``; the suite agreed (ssl.SSLError if none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(stack.cert))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", stack.ports["https"]), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.cipher()[0]


def test_tls_1_2_agrees_on_a_forward_secret_aead_suite(stack):
    assert _handshake(stack, "ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize(
    "ciphers",
    [
        "AES128-SHA",  # RSA key exchange: no forward secrecy
        "AES128-GCM-SHA256",  # RSA key exchange, even with an AEAD cipher
        "ECDHE-RSA-AES128-SHA",  # forward secret, but CBC with a SHA-1 MAC
        "ECDHE-RSA-AES256-SHA384",  # CBC
    ],
)
def test_tls_1_2_refuses_suites_without_forward_secrecy_or_with_cbc(stack, ciphers):
    with pytest.raises(ssl.SSLError):
        _handshake(stack, ciphers)


def test_pages_carry_the_content_security_policy_once(stack):
    from vending_site.http.csp import POLICY

    for path in ("/admin/login/", "/"):
        response = stack.https("GET", path)
        assert response.headers.get_all("Content-Security-Policy") == [POLICY], path


def test_the_plain_http_redirect_ignores_a_forged_host(stack):
    for host in ("evil.example", "evil.example:8443", "127.0.0.1.evil.example"):
        response = stack.http("http", "GET", "/admin/", headers={"Host": host})
        assert response.status == 301
        assert response.getheader("Location") == (
            f"https://127.0.0.1:{stack.ports['https']}/admin/"
        ), host


def _websocket_handshake(stack: Stack, cookie: str | None) -> int:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    origin = f"https://127.0.0.1:{stack.ports['https']}"
    lines = [
        "GET /ws/events/ HTTP/1.1",
        f"Host: 127.0.0.1:{stack.ports['https']}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    raw = socket.create_connection(("127.0.0.1", stack.ports["https"]), timeout=15)
    with stack.tls.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        deadline = time.monotonic() + 15
        try:
            while b"\r\n\r\n" not in head and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except TimeoutError:
            # Seen once in CI and never reproduced since: keep what each process said.
            tail = stack.log.read_text(errors="replace").splitlines()[-60:]
            pytest.fail(f"no answer to the handshake in 15 s ({head!r}):\n" + "\n".join(tail))
    status_line = head.split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1])


def _staff_session_cookie(stack: Stack) -> str:
    login = stack.https("GET", "/admin/login/")
    csrf_cookie = re.search(r"csrftoken=([^;]+)", login.getheader("Set-Cookie")).group(1)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', login.body).group(1)
    origin = f"https://127.0.0.1:{stack.ports['https']}"
    response = stack.https(
        "POST",
        "/admin/login/",
        body=urlencode(
            {
                "username": "smoke-admin",
                "password": ADMIN_PASSWORD,
                "csrfmiddlewaretoken": token.decode(),
                "next": "/admin/",
            }
        ),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrf_cookie}",
            "Origin": origin,
            "Referer": f"{origin}/admin/login/",
        },
    )
    assert response.status == 302, response.body[:500]
    cookies = response.headers.get_all("Set-Cookie")
    session = next(c for c in cookies if c.startswith("sessionid="))
    # Secure cookies: the workers know the request came over HTTPS (X-Forwarded-Proto).
    assert "Secure" in session
    return session.split(";", 1)[0]


def test_websocket_upgrade_reaches_channels_through_nginx(stack):
    # Anonymous: Channels refuses the handshake (403) - the upgrade got through to it.
    assert _websocket_handshake(stack, cookie=None) == 403
    assert _websocket_handshake(stack, cookie=_staff_session_cookie(stack)) == 101


def _logged_by(stack: Stack, needle: str) -> set[str]:
    """The honcho process names (``web``, ``ws``, ...) whose output has ``needle``."""
    names = set()
    for line in stack.log.read_text(errors="replace").splitlines():
        match = re.match(r"\S+ (\w+)\.\d+\s+\| (.*)$", line)
        if match and needle in match.group(2):
            names.add(match.group(1))
    return names


def test_http_is_answered_by_granian_and_the_websocket_by_manage_py_serve(stack):
    marker = f"route-{os.getpid()}-{time.monotonic_ns()}"
    assert stack.https("GET", "/health", headers={"X-Request-ID": marker}).status == 200
    device = stack.http(
        "device",
        "GET",
        "/esp32/commands/ESP32_AABBCCDDEEFF",
        headers={"X-Request-ID": f"{marker}-device"},
    )
    assert device.status == 200
    # The access log (the application's, JSON lines on the web process's stderr, which
    # honcho merges into its output as "web.1 | ...") names the request id it answered with.
    for request_id, path in ((marker, "/health"), (f"{marker}-device", "/esp32/commands/")):
        needle = f'"request_id": "{request_id}"'
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _logged_by(stack, needle):
            time.sleep(0.1)
        assert _logged_by(stack, needle) == {"web"}, request_id
        lines = [x for x in stack.log.read_text().splitlines() if needle in x]
        access = [line for line in lines if '"logger": "vending.access"' in line]
        assert len(access) == 1, lines
        assert '"event": "request"' in access[0] and f'"path": "{path}' in access[0], access

    assert _websocket_handshake(stack, cookie=None) == 403
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _logged_by(stack, "/ws/events/"):
        time.sleep(0.1)
    # ws's access log (manage.py serve) has the handshake (nginx's too); web never saw it.
    assert _logged_by(stack, "/ws/events/") - {"nginx"} == {"ws"}


def test_a_login_flood_is_refused_by_nginx_before_django_hashes_anything(stack):
    """Each password check costs a slow hash and even Django's own refusal costs a worker a
    few milliseconds (docs/security.md, "Measured"): past its burst nginx answers itself."""
    body = json.dumps({"username": "nobody", "password": "wrong"}).encode()
    answers = [
        stack.https(
            "POST", "/api/v1/auth/token/", body=body, headers={"Content-Type": "application/json"}
        )
        for _ in range(25)
    ]

    by_nginx = [
        answer
        for answer in answers
        if answer.status == 429 and b"Too many login attempts" in answer.body
    ]
    assert len(by_nginx) >= 10, [(a.status, a.body[:80]) for a in answers]
    assert json.loads(by_nginx[0].body)["code"] == "throttled"
    assert by_nginx[0].getheader("Retry-After") == "3"
    assert answers[0].status in (401, 429)  # the first ones reach Django, which decides
    assert b"Too many login attempts" not in answers[0].body
