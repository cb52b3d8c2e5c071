"""The project's own management commands as real processes against the running pytest's
test database (a child shares it through DATABASE_URL), their output read line by line."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

from django.db import connection

from tests.scratch import ROOT


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
    """``manage.py <args>`` on the test database, its output on a pipe (:func:`read_until`)."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_server(port: int, **env: str) -> subprocess.Popen:
    """The web server as ``make run`` starts it (``manage.py serve``: granian, ASGI) on
    127.0.0.1:``port``, without an access log; ``env`` adds settings. Its output is
    :func:`drained`: :func:`stop` returns all of it."""
    return drained(
        start_command(
            "serve", "--host", "127.0.0.1", "--port", str(port), "--access-log", "/dev/null", **env
        )
    )


def drained(process: subprocess.Popen) -> subprocess.Popen:
    """Read the child's output in a thread as it comes; :func:`stop` returns all of it.

    A pipe holds 64 KiB. A server logs a warning line for each refused request, and once
    nobody has read the pipe for a while the next write blocks the thread that logs, and
    the request it serves with it: a server under a flood of refused requests stopped
    answering for seconds at a time (the LAN attacker's test waited out 5 s timeouts for
    most of its 70 s). Not for a child whose output :func:`read_until` reads.
    """
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:  # ends when the child closes its output
            lines.append(line)

    reader = threading.Thread(target=read, name=f"drain-{process.pid}", daemon=True)
    reader.start()
    process.drained = (reader, lines)
    return process


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
    """SIGTERM the child; return its exit code and the rest of its output (all of it for
    a :func:`drained` one)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    if hasattr(process, "drained"):
        reader, lines = process.drained
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout)
        return process.returncode, "".join(lines)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output
