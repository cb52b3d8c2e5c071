"""gunicorn as production runs it (``deploy/gunicorn.conf.py``), as a real process on a
free loopback port against the test database: its workers' metrics survive recycling and
SIGKILL counted exactly once, its logs have the project's shape, it keeps database
connections, and it says that long-poll does nothing under it."""

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from devices.system_checks import Status, check_web
from tests.integration.processes import ROOT, child_env, free_port, request, wait_for, wait_for_http
from tests.integration.scratch_stack import gunicorn_argv
from vending_site.metrics_files import pid_alive, pid_of

DEVICE = "ESP32_A0B1C2D3E4F5"
POLLS_BEFORE_KILL = 40
POLLS_AFTER_KILL = 25


class Gunicorn:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.metrics = tmp_path / "metrics"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = tmp_path / "gunicorn.out", tmp_path / "gunicorn.err"
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
                gunicorn_argv(f"127.0.0.1:{self.port}"),
                cwd=ROOT,
                env=environment,
                stdout=out,
                stderr=err,
            )

    def workers(self) -> list[int]:
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

    def lines(self, which: str) -> list[dict]:
        path = self.out if which == "out" else self.err
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def start_gunicorn(tmp_path):
    started = []

    def start(workers: int = 2, **env: str) -> Gunicorn:
        server = Gunicorn(tmp_path, WEB_WORKERS=str(workers), WEB_THREADS="2", **env)
        started.append(server)
        wait_for_http(f"{server.url}/health", timeout=60, process=server.process)
        wait_for(lambda: len(server.workers()) == workers, 30, "every worker")
        return server

    yield start
    for server in started:
        code = server.stop()
        assert code == 0, server.err.read_text()[-3000:]


def scrape_polls(url: str) -> float:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/metrics", timeout=10) as response:
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


@pytest.mark.django_db(transaction=True)
def test_recycled_and_killed_workers_keep_every_poll_counted_once(start_gunicorn):
    # Workers are recycled every 10-11 requests, so this run replaces several of them.
    server = start_gunicorn(WEB_MAX_REQUESTS="10")
    status, _, body = request(server.url, "POST", "/esp32/register", {"device_id": DEVICE})
    assert status == 200, body

    poll(server.url, POLLS_BEFORE_KILL)
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(pids := server.workers()) == 2 and victim not in pids, 30, "a new worker")
    poll(server.url, POLLS_AFTER_KILL)

    assert scrape_polls(server.url) == POLLS_BEFORE_KILL + POLLS_AFTER_KILL
    # Nothing of a dead worker is left beside the archive: the master folded its files when
    # it reaped it (child_exit), and each count is in exactly one file.
    for path in glob.glob(str(server.metrics / "*.db")):
        pid = pid_of(path)
        assert pid is None or pid_alive(pid), f"{path} belongs to a dead process"
    errors = " ".join(line["event"] for line in server.lines("err"))
    assert f"Worker (pid:{victim}) was sent SIGKILL" in errors
    assert errors.count("Autorestarting worker") >= 2, errors

    # Stopped, gunicorn leaves the archive alone, every count in it (no worker starts after
    # the last ones exit, so only the master's child_exit can have folded them).
    assert server.stop() == 0
    left = sorted(path.name for path in server.metrics.glob("*.db"))
    assert left == ["counter_archive.db", "histogram_archive.db"], left
    archive = MmapedDict.read_all_values_from_file(str(server.metrics / "counter_archive.db"))
    polls = [v for key, v, _t, _p in archive if '"vending_device_polls_total"' in key]
    assert polls == [POLLS_BEFORE_KILL + POLLS_AFTER_KILL]


@pytest.mark.django_db(transaction=True)
def test_logs_are_json_lines_and_the_access_line_carries_the_request_id(start_gunicorn):
    server = start_gunicorn()
    status, headers, _ = request(server.url, "GET", "/health", headers={"X-Request-ID": "gc-1"})
    assert status == 200 and headers["X-Request-ID"] == "gc-1"
    assert headers["Server"].startswith("gunicorn")

    def access_line():
        return next((x for x in server.lines("out") if x.get("request_id") == "gc-1"), None)

    line = wait_for(access_line, 10, "the access line")
    assert line["logger"] == "gunicorn.access" and line["event"] == "request"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/health", 200)
    assert {"timestamp", "level", "duration_ms", "remote_addr"} <= set(line)
    booted = [x for x in server.lines("err") if x["event"].startswith("Booting worker")]
    assert len(booted) == 2 and all(x["logger"] == "gunicorn.error" for x in booted)


@pytest.mark.django_db(transaction=True)
def test_long_poll_is_said_to_do_nothing_under_gunicorn(start_gunicorn, settings):
    server = start_gunicorn(DEVICE_LONG_POLL_SECONDS="1.5")
    warned = [x for x in server.lines("err") if "DEVICE_LONG_POLL_SECONDS" in x["event"]]
    assert warned and warned[0]["level"] == "warning"

    settings.DEVICE_LONG_POLL_SECONDS = 1.5
    result = check_web(url=f"{server.url}/health")
    assert result.status == Status.WARN
    assert "gunicorn" in result.detail and "Daphne" in result.hint
    settings.DEVICE_LONG_POLL_SECONDS = 0
    assert check_web(url=f"{server.url}/health").status == Status.PASS


def test_gunicorn_workers_keep_database_connections_and_daphne_does_not(tmp_path):
    """The settings each launcher ends up with (CONN_MAX_AGE 60 under gunicorn's config,
    0 otherwise), read from a child that loads them the way each launcher does."""
    probe = (
        "import runpy, sys; sys.argv = ['gunicorn'];"
        "{load}"
        "from django.conf import settings;"
        "d = settings.DATABASES['default'];"
        "print(d.get('CONN_MAX_AGE', 0), d.get('CONN_HEALTH_CHECKS', False))"
    )
    env = dict(
        os.environ,
        DATABASE_URL="postgres://u@127.0.0.1:1/x",
        DATA_DIR=str(tmp_path),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"),
    )
    env.pop("CONN_MAX_AGE", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    results = {}
    for launcher, load in {
        "gunicorn": "runpy.run_path('deploy/gunicorn.conf.py');",
        "daphne": "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'vending_site.settings';",
    }.items():
        done = subprocess.run(
            [sys.executable, "-c", probe.format(load=load)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results[launcher] = done.stdout.split()
    assert results == {"gunicorn": ["60", "True"], "daphne": ["0", "True"]}
    env["CONN_MAX_AGE"] = "0"  # an explicit setting wins, under gunicorn too
    done = subprocess.run(
        [sys.executable, "-c", probe.format(load="runpy.run_path('deploy/gunicorn.conf.py');")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["0", "True"], done.stderr[-2000:]
