"""A PostgreSQL cluster of a test's own (initdb + pg_ctl), so a test can restart the server
itself without touching the shared one on 5432.

Data directory and Unix socket directory in a fresh directory under the system temp dir;
listens on 127.0.0.1 only, on a free port; trust authentication for the ``postgres`` role.
Every pg_ctl call is bounded (``-w -t`` and a subprocess timeout), and :meth:`stop` (also
run by ``__exit__``) ends the server, immediately if a fast stop does not, then removes the
directory.

initdb and the server refuse to run as root ("initdb: error: cannot be run as root"): they
must run as the unprivileged account that owns the data. So when this process is root and
a ``postgres`` account exists, every PostgreSQL binary is started as that account (a
privilege drop through ``subprocess``'s ``user=``, not an elevation) and the directory is
given to it; as any other user they run as that user.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_CTL_WAIT = 30  # seconds pg_ctl waits for a start or a stop


def binaries() -> tuple[str, str] | None:
    """``(initdb, pg_ctl)`` from PATH, or ``None``."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


def unavailable() -> str:
    """Why a cluster cannot be made here ('' when it can)."""
    if binaries() is None:
        return "initdb/pg_ctl are not on PATH (PostgreSQL server binaries not installed)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root (initdb refuses root) and there is no postgres account"
    return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.initdb, self.pg_ctl = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="soak_pg_"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = _free_port()
        self.owner = None
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            self.owner = (account.pw_uid, account.pw_gid)
            os.chown(self.dir, *self.owner)
        self.started = False

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, *args: str, timeout: float = PG_CTL_WAIT + 15) -> str:
        extra = {}
        if self.owner is not None:
            extra = {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        done = subprocess.run(
            args,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            # A file, not a pipe: the server pg_ctl leaves behind would hold a pipe open.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if args[0] == self.initdb else subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            **extra,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} {args[1:3]} exited {done.returncode}: "
                f"{(done.stderr or '')[-1500:]}\n{self.server_log()[-1500:]}"
            )
        return done.stderr or ""

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> "Cluster":
        self._pg(
            self.initdb,
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",  # initdb's own files only; the server itself keeps fsync on
            timeout=120,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.dir} -c max_connections=60"
        )
        self.started = True
        self._pg(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(PG_CTL_WAIT),
            "start",
        )
        return self

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m <mode>`` (``fast``: sessions ended, a clean shutdown;
        ``immediate``: every server process killed, crash recovery at start); returns once
        the server accepts connections again."""
        self._pg(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-m",
            mode,
            "-w",
            "-t",
            str(PG_CTL_WAIT),
            "restart",
        )

    def stop(self) -> None:
        try:
            if self.started:
                for mode in ("fast", "immediate"):
                    try:
                        self._pg(
                            self.pg_ctl,
                            "-D",
                            str(self.data),
                            "-m",
                            mode,
                            "-w",
                            "-t",
                            str(PG_CTL_WAIT),
                            "stop",
                        )
                        break
                    except (RuntimeError, subprocess.TimeoutExpired):
                        continue
                self.started = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
