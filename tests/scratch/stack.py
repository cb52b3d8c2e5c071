""":class:`Stack`: the project's real processes started with one environment against a
scratch database, each logged to a file, waited for, and ended by :meth:`Stack.close`.

    with Stack({"DEVICE_OFFLINE_AFTER": "60"}) as stack:
        stack.create_database("bench_")          # or stack.use_sqlite()
        stack.use_redis(redis_url(14))           # flushed now and at the end
        url = stack.start_web()                  # granian as shipped, once /health answers
        stack.seed(["ESP32_..."], [100] * 5)     # machines, stock, a vend-client user
        stack.start("sweeper", "sweep_commands", "--every", "1")

Writes into the scratch database happen in a child (``python -m tests.scratch.seed``)
through the project's own services, so the caller never has to switch databases. Child
output goes to files (a pipe nobody drains would block a chatty worker). Each child runs in
a session of its own: a terminal's Ctrl-C reaches the caller alone, whose ``finally`` ends
the children; a child that outlives SIGTERM is SIGKILLed with its process group.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.scratch import ROOT, databases
from tests.scratch.net import StackError, free_port, wait_http

WEB_SERVER = ROOT / "deploy" / "web.py"
PASSWORD = "scratch-password-1"


def web_argv(bind: str, *options: str) -> list[str]:
    """The production web server's command line (``deploy/web.py``, as the Procfile,
    compose and systemd run it) bound to ``bind``; ``options`` are its other flags
    (``--workers``, ``--threads``). Tests and the benchmarks start it only through this."""
    return [sys.executable, str(WEB_SERVER), "--bind", bind, *options]


class Stack:
    """Children started with one environment (``env`` on top of the caller's, without its
    DATABASE_URL and REDIS_URL), logged to ``<workdir>/<name>.log``.

    ``workdir`` (also DATA_DIR and the metrics directory) is made and removed by the stack
    unless given. :meth:`close` ends every child, drops the database it created and flushes
    the Redis database it was given.
    """

    username = "bench"  # the vend-client user :meth:`seed` makes unless told otherwise

    def __init__(self, env: dict[str, str] | None = None, workdir: Path | None = None) -> None:
        self.own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vending-scratch-"))
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "SERVER_SOFTWARE")
        }
        self.env.update(
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="vending_site.settings",
            DATA_DIR=str(self.workdir),
            PROMETHEUS_MULTIPROC_DIR=str(self.workdir / "metrics"),
            SECRET_KEY=secrets.token_urlsafe(40),
        )
        self.env.update(env or {})
        self.children: dict[str, subprocess.Popen] = {}
        self.database = ""  # the PostgreSQL database this stack created (dropped at close)
        self.redis_url = ""  # the Redis database this stack flushes
        self.migrated = False

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- data -------------------------------------------------------------------------------

    def create_database(self, prefix: str, *, migrated: bool = True) -> str:
        """A scratch PostgreSQL database for the children (cloned from the migrated template
        unless ``migrated`` is false: then empty until :meth:`migrate`); its name."""
        self.database = databases.create_database(prefix, template=migrated)
        self.env["DATABASE_URL"] = databases.database_url(self.database)
        self.migrated = migrated
        return self.database

    def use_sqlite(self) -> None:
        """A SQLite file in the work directory, migrated now."""
        self.env["DATABASE_URL"] = f"sqlite:///{self.workdir / 'db.sqlite3'}"
        self.migrate()

    def use_redis(self, url: str) -> None:
        """Redis database ``url`` for the children, flushed now and at :meth:`close`."""
        databases.flush_redis(url)
        self.env["REDIS_URL"] = self.redis_url = url

    @property
    def database_url(self) -> str:
        return self.env.get("DATABASE_URL", "")

    @property
    def database_label(self) -> str:
        if self.database_url.startswith("sqlite"):
            return "SQLite, in-memory channel layer"
        return "PostgreSQL + Redis" if self.redis_url else "PostgreSQL"

    def migrate(self) -> None:
        self.run("manage.py", "migrate", "--noinput", "-v", "0", timeout=180)
        self.migrated = True

    def seed(
        self,
        devices: list[str],
        stock: list[int],
        username: str | None = None,
        password: str = PASSWORD,
    ) -> dict:
        """Register ``devices`` (WiFi, firmware v2.1, admitted from 127.0.0.1), give slot i
        a product and ``stock[i]`` units through the ledger, and create the vend-client user
        (:attr:`username` unless given); migrates first if need be. Returns
        ``{"ledger_after_setup": <last ledger row id>}``."""
        if not self.migrated:
            self.migrate()
        request = {
            "devices": devices,
            "stock": stock,
            "username": username or self.username,
            "password": password,
        }
        return json.loads(self.run("-m", "tests.scratch.seed", "setup", json.dumps(request)))

    def seed_fleet(self, *, devices: int, keys: int, stock: int, timeout: float = 300) -> dict:
        """``devices`` machines (bound to 10.x addresses), ``stock`` units in each of their 5
        slots, and ``keys`` vend API keys, in bulk; ``{"keys": [...], "devices": n}``."""
        if not self.migrated:
            self.migrate()
        request = json.dumps({"devices": devices, "keys": keys, "stock": stock})
        out = self.run("-m", "tests.scratch.seed", "fleet", request, timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read-only query on the scratch PostgreSQL database."""
        return databases.query(self.database_url, query, params)

    # --- processes --------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 120.0) -> str:
        """``python ARGS`` (``manage.py ...`` or ``-m module ...``) run to completion; its
        stdout. Fails with the child's stderr when it exits non-zero."""
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise StackError(f"{args} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done.stdout

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """``manage.py <args>`` in the background."""
        return self.start_argv(name, [sys.executable, "manage.py", *args], env=env)

    def start_argv(
        self, name: str, argv: list[str], *, env: dict | None = None, label: str = ""
    ) -> subprocess.Popen:
        """``argv`` in the background with the stack's environment (plus ``env``), output
        to ``<name>.log``; ``label`` (default ``name``) groups processes in reports."""
        log = open(self.workdir / f"{name}.log", "w")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(self.env, **(env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        process.log = log
        process.label = label or name
        self.children[name] = process
        return process

    def start_web(self, name: str = "web", *options: str, timeout: float = 90.0) -> str:
        """The production web tier (:func:`web_argv`: ``WEB_WORKERS`` x ``WEB_THREADS``
        from the environment unless ``options`` say otherwise) on a free port; its base URL
        once it answers ``/health``."""
        url = f"http://127.0.0.1:{free_port()}"
        self.start_argv(name, web_argv(url.removeprefix("http://"), *options))
        self.wait_ready(name, f"{url}/health", timeout)
        return url

    def start_workers(self, count: int, timeout: float = 90.0) -> list[str]:
        """``count`` embedded servers (``manage.py serve``, no access log) on free ports; their
        base URLs once each answers ``/health``."""
        urls = []
        for n in range(count):
            port = free_port()
            serve = ("serve", "--host", "127.0.0.1", "--port", str(port))
            self.start(f"web{n}", *serve, "--access-log", os.devnull)
            urls.append(f"http://127.0.0.1:{port}")
        for n, url in enumerate(urls):
            self.wait_ready(f"web{n}", f"{url}/health", timeout)
        return urls

    def wait_ready(self, name: str, url: str, timeout: float = 90.0) -> None:
        """Until ``url`` answers 200; fails with the tail of child ``name``'s log if it
        exits or the time runs out."""
        try:
            wait_http(url, timeout=timeout, process=self.children[name])
        except StackError as exc:
            raise StackError(f"{exc}\n{self.output(name)[-3000:]}") from None

    def output(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, pattern: str = "*") -> str:
        """Every log whose name (without ``.log``) matches the glob ``pattern``, one after
        the other."""
        paths = sorted(self.workdir.glob(f"{pattern}.log"))
        return "".join(path.read_text(errors="replace") for path in paths)

    def wait_output(self, name: str, needle: str, timeout: float = 30.0) -> str:
        """The child's first log line containing ``needle`` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output(name).splitlines():
                if needle in line:
                    return line
            if self.children[name].poll() is not None:
                break
            time.sleep(0.05)
        raise StackError(f"{name} did not print {needle!r}:\n{self.output(name)[-3000:]}")

    def processes(self) -> list:
        """psutil handles of every child and its descendants (a server's workers)."""
        import psutil

        found = []
        for child in self.children.values():
            try:
                root = psutil.Process(child.pid)
                found.append(root)
                found.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every child still running, SIGKILL (with its process group) any that
        outlives ``timeout``; their exit codes by name. The stack can start others after."""
        for process in self.children.values():
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        codes = {}
        for name, process in self.children.items():
            try:
                codes[name] = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                codes[name] = process.wait(timeout=timeout)
            process.log.close()
        self.children = {}
        return codes

    def close(self, timeout: float = 10.0) -> dict[str, int]:
        """:meth:`stop`, then drop the database, flush Redis and remove the work directory
        (each only if the stack made or was given it); the children's exit codes."""
        try:
            return self.stop(timeout)
        finally:
            if self.database:
                databases.drop_database(self.database)
                self.database = ""
            if self.redis_url:
                try:
                    databases.flush_redis(self.redis_url)
                except Exception:  # noqa: BLE001 - best effort at teardown
                    pass
            if self.own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
