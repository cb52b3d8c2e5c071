"""The soak's sampler: every interval, each server process's memory, descriptors, sockets
and threads (psutil), the scratch database's connections and Redis clients, beside the
interval's load figures (``bench/soak.py``)."""

from __future__ import annotations

import threading

from bench._fleet_load import summary
from tests.scratch import databases
from tests.scratch.stack import Stack

# What a server's parent process is called beside its workers: granian's "main" process,
# gunicorn's "master".
PARENT_NAMES = {"granian": "main"}


class Sampler:
    """Called with each interval's load figures (in a worker thread); appends a sample of
    the processes, PostgreSQL and Redis to :attr:`samples`."""

    def __init__(self, stack: Stack, *, log=print) -> None:
        import psycopg2
        import redis

        self.stack, self.log = stack, log
        self.samples: list[dict] = []
        self.workers_seen: set[int] = set()
        self.lock = threading.Lock()
        self.pg = psycopg2.connect(databases.pg_admin_url(), connect_timeout=5)
        self.pg.autocommit = True
        self.redis = None
        if stack.redis_url:
            self.redis = redis.Redis.from_url(
                stack.redis_url, socket_timeout=3, single_connection_client=True
            )
            self.redis_self = self.redis.client_id()
            self.redis_db = int(stack.redis_url.rsplit("/", 1)[1] or 0)

    def processes(self) -> dict:
        """``"<label> [pid]"`` -> psutil.Process for every server process now."""
        import psutil

        found = {}
        for child in self.stack.children.values():
            label = getattr(child, "label", "server")
            try:
                root = psutil.Process(child.pid)
                kids = root.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            parent = f" {PARENT_NAMES.get(label, 'master')}" if kids else ""
            found[f"{label}{parent} [{root.pid}]"] = root
            for kid in kids:
                found[f"{label} worker [{kid.pid}]"] = kid
                self.workers_seen.add(kid.pid)
        return found

    @staticmethod
    def process_figures(process) -> dict | None:
        import psutil

        try:
            with process.oneshot():
                return {
                    "rss_mb": round(process.memory_info().rss / 2**20, 2),
                    "fds": process.num_fds(),
                    "sockets": len(process.net_connections(kind="inet")),
                    "threads": process.num_threads(),
                }
        except psutil.Error:  # it ended between the listing and now
            return None

    def pg_connections(self) -> dict:
        with self.pg.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(state, 'other'), count(*) FROM pg_stat_activity "
                "WHERE datname = %s GROUP BY 1",
                (self.stack.database,),
            )
            return dict(cursor.fetchall())

    def redis_clients(self) -> tuple[int | None, int | None]:
        """Clients on our database (ourselves excluded), and on the whole server."""
        if self.redis is None:
            return None, None
        clients = self.redis.client_list()
        ours = [
            c
            for c in clients
            if int(c.get("db", -1)) == self.redis_db and int(c["id"]) != self.redis_self
        ]
        return len(ours), len(clients)

    def __call__(self, figures: dict) -> None:
        sample = {"t": round(figures.get("at", 0.0), 1), "processes": {}}
        for name, process in self.processes().items():
            measured = self.process_figures(process)
            if measured is not None:
                sample["processes"][name] = measured
        by_state = self.pg_connections()
        sample["pg_connections"] = sum(by_state.values())
        sample["pg_by_state"] = by_state
        sample["redis_clients"], sample["redis_clients_server"] = self.redis_clients()
        for kind in ("poll", "vend", "confirm"):
            sample[kind] = summary(figures.get(kind, []))
            sample[kind]["errors"] = sum(figures.get(f"{kind}_errors", {}).values())
            sample[kind]["error_kinds"] = figures.get(f"{kind}_errors", {})
        sample["commands"] = figures.get("commands", 0)
        with self.lock:
            self.samples.append(sample)
        self.log(format_sample(sample))

    def close(self) -> None:
        self.pg.close()
        if self.redis is not None:
            self.redis.close()


def format_sample(sample: dict) -> str:
    rss = sum(p["rss_mb"] for p in sample["processes"].values())
    poll, vend = sample["poll"], sample["vend"]
    return (
        f"t={sample['t']:>6.0f}s  polls {poll['count']:>5} p50 {poll['p50']:>7.1f} "
        f"p99 {poll['p99']:>7.1f} ms err {poll['errors']:>4}  vends {vend['count']:>4} "
        f"err {vend['errors']:>3}  pg conns {sample['pg_connections']:>3}  "
        f"redis clients {sample['redis_clients']}  RSS {rss:>7.1f} MB in "
        f"{len(sample['processes'])} processes"
    )
