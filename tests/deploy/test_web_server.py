"""granian as production runs it (``deploy/web.py``), as a real process on a free loopback
port against the test database: a SIGKILLed worker is replaced and every poll stays counted
exactly once, SIGTERM ends it with 0 and leaves only the metrics archive, its logs (granian's
own and the application's access log) are JSON lines on stderr, and its workers keep
database connections where ``manage.py serve`` does not.

granian exits when a worker dies again within 5.5 s of being replaced (a crash loop), so no
test here kills a worker twice."""

import glob
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import dry_run_web
from tests.scratch import ROOT
from tests.scratch.children import child_env, run_python
from tests.scratch.net import free_port, loopback_opener, request, wait_for, wait_http
from tests.scratch.stack import web_argv
from vending_site.observability.metrics_files import pid_alive, pid_of

DEVICE = "ESP32_A0B1C2D3E4F5"
POLLS_BEFORE_KILL = 40
POLLS_AFTER_KILL = 25


class WebServer:
    """``python deploy/web.py --bind 127.0.0.1:<free port>``, its stdout and stderr in files."""

    def __init__(self, directory: Path, **env: str) -> None:
        directory.mkdir()
        self.metrics = directory / "metrics"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = directory / "web.out", directory / "web.err"
        environment = child_env(
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics),
            DEVICE_THROTTLE="100000/min",
            DEVICE_ADDRESS_THROTTLE="100000/min",
            LOG_LEVEL="INFO",
            LOG_FORMAT="json",
            **env,
        )
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                web_argv(f"127.0.0.1:{self.port}"),
                cwd=ROOT,
                env=environment,
                stdout=out,
                stderr=err,
            )

    def workers(self) -> list[int]:
        """Pids of granian's worker processes: the children of its main process."""
        try:
            return sorted(child.pid for child in psutil.Process(self.process.pid).children())
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def lines(self) -> list[dict]:
        """Every line on stderr, parsed (each must be JSON)."""
        return [json.loads(line) for line in self.err.read_text().splitlines() if line]

    def events(self) -> list[str]:
        return [line["event"] for line in self.lines() if line["logger"].startswith("_granian")]

    def started(self, worker: str = "worker-") -> int:
        """How many times a worker (``worker-2``; any by default) said it serves: granian
        logs it once the worker has loaded the application, ready for connections."""
        return sum(event.startswith(f"Started {worker}") for event in self.events())

    def access_line(self, request_id: str) -> dict | None:
        return next(
            (
                line
                for line in self.lines()
                if line["logger"] == "vending.access" and line.get("request_id") == request_id
            ),
            None,
        )


@pytest.fixture
def start_web(tmp_path):
    started = []

    def start(workers: int = 2, **env: str) -> WebServer:
        directory = tmp_path / f"web{len(started)}"
        server = WebServer(directory, WEB_WORKERS=str(workers), WEB_THREADS="2", **env)
        started.append(server)
        wait_http(f"{server.url}/health", timeout=60, process=server.process)
        wait_for(lambda: len(server.workers()) == workers, 30, "every worker")
        # The tests start from every worker ready (the early stop has a test of its own).
        wait_for(lambda: server.started() == workers, 30, "every worker ready")
        return server

    yield start
    for server in started:
        code = server.stop()
        assert code == 0, server.err.read_text()[-3000:]


@pytest.mark.django_db(transaction=True)
def test_a_stop_while_workers_still_load_the_application_is_prompt(tmp_path):
    """A worker is forked with the main process' signal handlers and installs granian's own
    only once Django is loaded; deploy/web.py's loader puts SIGTERM back to its default first,
    so a stop then ends the worker at once instead of waiting STOP_TIMEOUT to kill it."""
    server = WebServer(tmp_path / "early", WEB_WORKERS="2", WEB_THREADS="2")
    try:
        wait_for(
            lambda: sum(e.startswith("Worker ") and "loading" in e for e in server.events()) == 2,
            30,
            "both workers loading the application",
        )
        if server.started():  # Django loaded faster than we looked: nothing to test
            pytest.skip("a worker was ready before the stop could be sent")
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=10)  # STOP_TIMEOUT is 20 s
    finally:
        server.stop()
    assert code == 0, server.err.read_text()[-3000:]
    assert not [e for e in server.events() if e.startswith("Killing")], server.events()


def scrape_polls(url: str) -> float:
    with loopback_opener().open(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vending_device_polls_total" and sample.labels == {
                "dialect": "wifi_v2"
            }:
                return sample.value
    return 0.0


def poll(url: str, times: int) -> None:
    for _ in range(times):
        status, _headers, _body = request(url, "GET", f"/esp32/commands/{DEVICE}")
        assert status == 200


def dead_processes_files(metrics: Path) -> list[str]:
    return [
        path
        for path in glob.glob(str(metrics / "*.db"))
        if (pid := pid_of(path)) is not None and not pid_alive(pid)
    ]


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_replaced_and_every_poll_stays_counted_once(start_web):
    server = start_web()
    status, _, body = request(server.url, "POST", "/esp32/register", {"device_id": DEVICE})
    assert status == 200, body
    poll(server.url, POLLS_BEFORE_KILL)
    assert scrape_polls(server.url) == POLLS_BEFORE_KILL

    victim = server.workers()[0]
    spawned = [e for e in server.events() if e.endswith(f" with PID: {victim}")]
    assert len(spawned) == 1, server.events()
    number = re.match(r"Spawning (worker-\d+) ", spawned[0]).group(1)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(pids := server.workers()) == 2 and victim not in pids, 30, "a new worker")
    wait_for(lambda: server.started(number) == 2, 30, "the replacement ready")
    poll(server.url, POLLS_AFTER_KILL)

    assert scrape_polls(server.url) == POLLS_BEFORE_KILL + POLLS_AFTER_KILL
    # The replacement folded the dead worker's files into the archive when it started, so
    # each count is in exactly one file.
    wait_for(lambda: not dead_processes_files(server.metrics), 30, "the dead worker's files folded")
    assert server.process.poll() is None, "granian exited with its worker"
    events = server.events()
    assert f"Unexpected exit from {number}" in events, events
    assert f"Respawning {number}" in events, events

    # Stopped, granian leaves the archive alone, every count in it: its shutdown hook
    # (deploy/web.py's fold_metrics) folded the last workers' files after they exited.
    assert server.stop() == 0, server.err.read_text()[-3000:]
    left = sorted(path.name for path in server.metrics.glob("*.db"))
    assert left == ["counter_archive.db", "histogram_archive.db"], left
    archive = MmapedDict.read_all_values_from_file(str(server.metrics / "counter_archive.db"))
    polls = [v for key, v, _t, _p in archive if '"vending_device_polls_total"' in key]
    assert polls == [POLLS_BEFORE_KILL + POLLS_AFTER_KILL]
    events = server.events()
    assert events[-1] == "Granian shutdown completed, see ya!", events
    assert not [e for e in events if e.startswith("Killing")], events  # all stopped in time


@pytest.mark.django_db(transaction=True)
def test_logs_are_json_lines_on_stderr_and_the_access_line_carries_the_request_id(start_web):
    server = start_web()
    status, headers, _ = request(server.url, "GET", "/health", headers={"X-Request-ID": "gr-1"})
    assert status == 200 and headers["X-Request-ID"] == "gr-1"
    assert headers["Server"] == "granian"
    status, headers, _ = request(
        server.url,
        "POST",
        "/esp32/register",
        {"device_id": DEVICE},
        headers={"X-Request-ID": "gr-2", "User-Agent": "ESP32-test/2.1"},
    )
    assert status == 200 and headers["X-Request-ID"] == "gr-2"

    line = wait_for(lambda: server.access_line("gr-1"), 10, "the access line")
    assert line["event"] == "request" and line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/health", 200)
    assert line["remote_addr"] == "127.0.0.1" and line["duration_ms"] >= 0
    assert "timestamp" in line and line["bytes"] > 0
    # The firmware's request, through the device handler, is logged the same way.
    line = wait_for(lambda: server.access_line("gr-2"), 10, "the device's access line")
    assert (line["method"], line["path"], line["status"]) == ("POST", "/esp32/register", 200)
    assert line["user_agent"] == "ESP32-test/2.1"

    # granian's own lines, from its main process and its workers, in the same shape.
    lines = server.lines()  # every stderr line parsed as JSON
    granian = [x for x in lines if x["logger"].startswith("_granian")]
    assert {"timestamp", "level", "logger", "event"} <= set(granian[0])
    events = [x["event"] for x in granian]
    assert f"Starting granian (main PID: {server.process.pid})" in events
    assert f"Listening at: http://127.0.0.1:{server.port}" in events
    spawned = [e for e in events if e.startswith("Spawning worker-")]
    assert len(spawned) == 2, events
    assert sorted(int(e.rsplit(" ", 1)[1]) for e in spawned) == server.workers()
    assert server.out.read_text() == ""  # nothing on stdout


@pytest.mark.django_db(transaction=True)
def test_with_the_access_log_off_no_request_is_logged(start_web):
    quiet, loud = start_web(WEB_ACCESS_LOG="false"), start_web(WEB_ACCESS_LOG="true")
    for server in (quiet, loud):
        for number in range(3):
            status, _, _ = request(
                server.url, "GET", "/health", headers={"X-Request-ID": f"q-{number}"}
            )
            assert status == 200
    # The application writes its line (flushed) before it hands the response back, so a line
    # would be there by now.
    assert not [x for x in quiet.lines() if x["logger"] == "vending.access"]
    assert any(x["logger"].startswith("_granian") for x in quiet.lines())  # still logging
    logged = [x.get("request_id") for x in loud.lines() if x["logger"] == "vending.access"]
    # The same requests with the log on (after the start-up's own /health probes).
    assert logged[-3:] == ["q-0", "q-1", "q-2"], logged


def test_granian_workers_keep_database_connections_and_serve_does_not(tmp_path):
    """The settings each launcher ends up with: deploy/web.py's main() run in a child up to
    serving (its workers are forks of that process, settings loaded), and a child that loads
    the settings as ``manage.py serve`` (granian, ASGI) does."""
    env = dict(
        os.environ,
        DATABASE_URL="postgres://u@127.0.0.1:1/x",
        DATA_DIR=str(tmp_path),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"),
    )
    env.pop("CONN_MAX_AGE", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)

    built = dry_run_web(["--bind", "127.0.0.1:8001"], env)
    assert (built["conn_max_age"], built["conn_health_checks"]) == (60, True)
    # An explicit setting wins, under granian too.
    built = dry_run_web(["--bind", "127.0.0.1:8001"], dict(env, CONN_MAX_AGE="0"))
    assert (built["conn_max_age"], built["conn_health_checks"]) == (0, True)

    serve = run_python(
        [
            "-c",
            "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'vending_site.settings';"
            "from django.conf import settings; d = settings.DATABASES['default'];"
            "print(d.get('CONN_MAX_AGE', 0), d.get('CONN_HEALTH_CHECKS', False))",
        ],
        env,
    )
    assert serve.split() == ["0", "True"]
