"""Scenario ``poll_ceiling``: how many idle polls a second each server answers, beside the
ceiling of the web server itself.

    .venv/bin/python bench/run.py --only poll_ceiling
    .venv/bin/python bench/poll_ceiling.py [--seconds 4] [--rounds 2] [--connections 64]
    .venv/bin/python bench/poll_ceiling.py --server production,hello \
        --variant off:DEVICE_POLL_SHORTCUT=false,DEVICE_POLL_CACHE_SECONDS=0

Debian's ``wrk`` (installed with ``apt-get`` when missing, as ``.ci/run`` installs its
tools) sends ``GET /esp32/commands/<id>`` over 1,000 known, approved machines in turn, each
request with the ``X-Forwarded-For`` of the machine's bound address (loopback is a trusted
proxy, as behind nginx), on 64 keep-alive connections, closed loop, a few seconds a round,
against:

- **production**: the production web tier as shipped (``deploy/web.py``: granian, 2 workers
  x 8 threads), PostgreSQL and Redis, the throttles lifted (``bench.common.BASE_ENV``);
- **hello**: the same granian with the same settings serving a WSGI application that
  answers ``null`` (``bench/hello_wsgi.py``): the ceiling;
- **embedded**: the default that ``make run`` starts (``manage.py serve``: granian, ASGI,
  one worker; SQLite, the in-memory channel layer);
- on request (``--server``): **hello-asgi**, the same granian serving an ASGI application
  that answers ``null`` (``bench/hello_asgi.py``: the embedded default's ceiling), and
  **daphne**, the embedded default before granian (Daphne serving Channels' router, every
  request through Django's ASGI handler).

Each row also gives the server's own CPU per poll (its process tree's CPU time over the
round's polls, the least of the rounds): the other load on a shared box moves it less than
the polls/s.

Rounds alternate between the servers (the machine's capacity moves between runs, so each
round's three figures are taken within seconds of each other); the best round of each is
reported, with its ratio to hello's best. wrk's ``--timeout`` is the firmware's 3 s: a
later answer counts as an error. The client shares the machine's cores with the server,
so these are the figures of one box serving its own load generator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_stack, make_row
from tests.scratch.net import Client, free_port
from tests.scratch.seed import device_id, machine_address
from tests.scratch.stack import web_argv

NAME = "poll_ceiling"
MACHINES = 1000
CONNECTIONS = 64
WRK_THREADS = 2
FIRMWARE_TIMEOUT = "3s"
MARK = "POLL_CEILING "
TARGETS = {"production": 10_000, "embedded": 2_000}  # polls/s (issue 18)
HELLO = Path(__file__).resolve().parent / "hello_wsgi.py"
HELLO_ASGI = Path(__file__).resolve().parent / "hello_asgi.py"

# Each wrk thread cycles over every machine's request (prepared once), starting at its own
# place; done() prints the figures as one JSON line (latencies in µs).
LUA = """
local paths = {%(paths)s}
local addresses = {%(addresses)s}
local prepared = {}
local turn = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

function init(args)
  for k = 1, #paths do
    prepared[k] = wrk.format("GET", paths[k], {["X-Forwarded-For"] = addresses[k]})
  end
  turn = (offset * 499) %% #prepared
end

function request()
  turn = turn %% #prepared + 1
  return prepared[turn]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50": %%d, "p95": %%d, "p99": %%d, ' ..
    '"max": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def ensure_wrk() -> str:
    """The path of ``wrk``, installed from Debian's archive when missing (needs root, as
    ``.ci/run``'s own installs)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    for argvs in ([], [install], [["apt-get", "update", "-qq"], install]):
        for argv in argvs:
            subprocess.run(argv, env=env, capture_output=True, timeout=300)
        found = shutil.which("wrk")
        if found:
            return found
    raise RuntimeError("wrk is missing and `apt-get install -y wrk` did not install it")


def write_script(directory: Path, machines: int) -> Path:
    quoted = lambda values: ", ".join(f'"{value}"' for value in values)  # noqa: E731
    script = directory / "poll_ceiling.lua"
    script.write_text(
        LUA
        % {
            "paths": quoted(f"/esp32/commands/{device_id(i)}" for i in range(machines)),
            "addresses": quoted(machine_address(i) for i in range(machines)),
            "mark": MARK,
        }
    )
    return script


def run_wrk(wrk: str, script: Path, url: str, seconds: float, connections: int) -> dict:
    """One closed-loop round; wrk's figures with ``polls_per_s`` and ``errors`` added."""
    argv = [
        wrk,
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={FIRMWARE_TIMEOUT}",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stdout[-800:]}{done.stderr}")
    figures = json.loads(lines[-1].removeprefix(MARK))
    figures["polls_per_s"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["errors"] = sum(
        figures[kind] for kind in ("connect", "read", "write", "status", "timeout")
    )
    return figures


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its live descendants
    (granian's workers); 0.0 for what has gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def check_idle_answer(url: str, index: int = 0) -> None:
    """The server answers a known machine's poll with ``null`` (not a refusal)."""
    client = Client(url, headers={"X-Forwarded-For": machine_address(index)})
    try:
        status, body = client.request("GET", f"/esp32/commands/{device_id(index)}")
    finally:
        client.close()
    if status != 200 or body.strip() != b"null":
        raise RuntimeError(f"{url}: idle poll answered {status} {body[:200]!r}")


def start_hello(stack, name: str = "hello", script: Path = HELLO) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, str(script), "--bind", url.removeprefix("http://")]
    stack.start_argv(name, argv)
    stack.wait_ready(name, f"{url}/health")
    return url


def start_variant(stack, name: str, env: dict[str, str]) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    stack.start_argv(name, web_argv(url.removeprefix("http://")), env=env)
    stack.wait_ready(name, f"{url}/health")
    return url


def start_daphne(stack, name: str = "daphne") -> str:
    """The embedded default before granian: Daphne serving Channels' router alone (Django's
    ASGI handler for every HTTP request), as ``manage.py serve`` ran it."""
    port = free_port()
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    stack.start_argv(name, [*argv, "--access-log", os.devnull, "vending_site.asgi:router"])
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(name, f"{url}/health")
    return url


def start_embedded(stack, name: str, env: dict[str, str] | None = None) -> str:
    """``manage.py serve`` (as ``make run`` starts it, no access log) with ``env`` added."""
    port = free_port()
    serve = ("serve", "--host", "127.0.0.1", "--port", str(port), "--access-log", os.devnull)
    stack.start(name, *serve, env=env)
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(name, f"{url}/health")
    return url


def measure(
    quick: bool,
    *,
    seconds: float | None = None,
    rounds: int | None = None,
    connections: int = CONNECTIONS,
    servers: tuple[str, ...] = ("production", "hello", "embedded"),
    variants: dict[str, dict[str, str]] | None = None,
    embedded_variants: dict[str, dict[str, str]] | None = None,
) -> dict:
    """``{server: [round figures]}``, with the servers' labels under ``"label"``.
    ``variants``: more production tiers, by name, each with settings of its own (an A/B
    of a setting in the same run); ``embedded_variants`` the same for the embedded default
    (on the same SQLite file)."""
    wrk = ensure_wrk()
    seconds = seconds or (2.0 if quick else 4.0)
    rounds = rounds or (1 if quick else 2)
    labels = {
        "production": "production tier (granian 2x8, PostgreSQL + Redis)",
        "hello": "hello WSGI on the same granian (answers null)",
        "hello-asgi": "hello ASGI on the embedded default's granian (answers null)",
        "daphne": "the embedded default before: Daphne, Django's ASGI handler, SQLite",
        "embedded": "embedded default (manage.py serve: granian ASGI, SQLite)",
    }
    variants = variants or {}
    embedded_variants = embedded_variants or {}
    for name, env in variants.items():
        labels[name] = f"production tier with {' '.join(f'{k}={v}' for k, v in env.items())}"
    for name, env in embedded_variants.items():
        labels[name] = f"embedded with {' '.join(f'{k}={v}' for k, v in env.items())}"
    servers = (*servers, *variants, *embedded_variants)
    results: dict[str, list[dict]] = {name: [] for name in servers}
    with bench_stack() as production, bench_stack(postgres=False) as embedded:
        script = write_script(production.workdir, MACHINES)
        urls = {}
        if "production" in servers or variants:
            production.seed_fleet(devices=MACHINES, keys=0, stock=10)
        if "production" in servers:
            urls["production"] = production.start_web()
        for name, env in variants.items():
            urls[name] = start_variant(production, name, env)
        if "hello" in servers:
            urls["hello"] = start_hello(production)
        if "hello-asgi" in servers:
            urls["hello-asgi"] = start_hello(embedded, "hello-asgi", HELLO_ASGI)
        if "embedded" in servers or "daphne" in servers or embedded_variants:
            embedded.seed_fleet(devices=MACHINES, keys=0, stock=10)
        if "embedded" in servers:
            urls["embedded"] = start_embedded(embedded, "embedded")
        for name, env in embedded_variants.items():
            urls[name] = start_embedded(embedded, name, env)
        if "daphne" in servers:
            urls["daphne"] = start_daphne(embedded)
        for name in servers:
            if not name.startswith("hello"):
                check_idle_answer(urls[name])
            run_wrk(wrk, script, urls[name], 1, connections)  # warm up: connections, caches
        pids = {
            name: stack.children[child].pid
            for stack in (production, embedded)
            for name in servers
            # the production tier is the scratch stack's own web server
            if (child := "web" if name == "production" else name) in stack.children
        }
        for _ in range(rounds):
            for name in servers:
                # The server's own CPU per poll: a figure the other load on the box moves
                # less than the polls/s (the client and other processes take cores away).
                cpu = tree_cpu_seconds(pids[name])
                figures = run_wrk(wrk, script, urls[name], seconds, connections)
                cpu = tree_cpu_seconds(pids[name]) - cpu
                figures["cpu_us_per_poll"] = cpu * 1e6 / max(1, figures["requests"])
                results[name].append(figures)
                time.sleep(0.5)
    return {"rounds": results, "labels": labels, "seconds": seconds, "connections": connections}


def best(rounds: list[dict]) -> dict:
    return max(rounds, key=lambda figures: figures["polls_per_s"])


def report(measured: dict) -> dict:
    rounds, labels = measured["rounds"], measured["labels"]
    ceiling = best(rounds["hello"])["polls_per_s"] if rounds.get("hello") else None
    rows, notes = [], []
    for name, figures_list in rounds.items():
        if not figures_list:
            continue
        top = best(figures_list)
        ratio = top["polls_per_s"] / ceiling if ceiling else None
        target = TARGETS.get(name)
        row = make_row(
            f"idle poll, {labels[name]}",
            [],
            errors=sum(figures["errors"] for figures in figures_list),
            target=f">= {target:,} polls/s" if target else "ceiling",
            polls_per_s=round(top["polls_per_s"]),
            per_round=[round(figures["polls_per_s"]) for figures in figures_list],
            cpu_us_per_poll=round(min(f["cpu_us_per_poll"] for f in figures_list)),
            ratio_to_hello=round(ratio, 4) if ratio is not None else None,
        )
        # wrk's own latency figures (µs) of the best round, at its closed-loop load.
        row.update(
            count=sum(figures["requests"] for figures in figures_list),
            **{stat: round(top[stat] / 1000, 3) for stat in ("p50", "p95", "p99", "max")},
            met=(top["polls_per_s"] >= target and row["errors"] == 0) if target else None,
        )
        rows.append(row)
        shown = ", ".join(f"{round(figures['polls_per_s']):,}" for figures in figures_list)
        notes.append(
            f"{name}: {round(top['polls_per_s']):,} polls/s (rounds: {shown})"
            + (f", {ratio:.2%} of hello" if ratio is not None and name != "hello" else "")
            + f"; server CPU {row['cpu_us_per_poll']} µs per poll (least of the rounds)"
        )
    notes.append(
        f"wrk -t{WRK_THREADS} -c{measured['connections']} --timeout {FIRMWARE_TIMEOUT}, "
        f"{measured['seconds']:.0f} s a round, {MACHINES} machines in turn; closed loop on "
        "the same cores as the server; best round shown"
    )
    return {"scenario": NAME, "rows": rows, "notes": notes}


def run(quick: bool) -> dict:
    return report(measure(quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--server",
        default="production,hello,embedded",
        help="comma-separated: production, hello, embedded, hello-asgi, daphne",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="another production tier with these settings, e.g. off:DEVICE_POLL_SHORTCUT=false",
    )
    parser.add_argument(
        "--embedded-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="another embedded default with these settings, e.g. off:DEVICE_POLL_SHORTCUT=false",
    )
    args = parser.parse_args()
    servers = tuple(name for name in args.server.split(",") if name)
    variants, embedded_variants = {}, {}
    for given, into in [(v, variants) for v in args.variant] + [
        (v, embedded_variants) for v in args.embedded_variant
    ]:
        name, _, settings = given.partition(":")
        into[name] = dict(pair.split("=", 1) for pair in settings.split(",") if "=" in pair)
    result = report(
        measure(
            False,
            seconds=min(args.seconds, 60),
            rounds=max(1, min(args.rounds, 10)),
            connections=args.connections,
            servers=servers,
            variants=variants,
            embedded_variants=embedded_variants,
        )
    )
    for row in result["rows"]:
        print(
            f"{row['metric']:<70} {row['polls_per_s']:>8,} polls/s  "
            f"p50 {row['p50']:.1f} p99 {row['p99']:.1f} ms  errors {row['errors']}"
        )
    for note in result["notes"]:
        print(note)


if __name__ == "__main__":
    main()
