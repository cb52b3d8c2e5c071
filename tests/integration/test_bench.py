"""The benchmark suite: its figures are honest (open-loop, nearest-rank percentiles) and
`bench/run.py` runs a scenario end to end and writes the results docs/benchmarks.md embeds.

The smoke run uses the discovery scenario (a few seconds of UDP on loopback); it writes to
a temporary directory so the committed results are never overwritten.
"""

import json
import subprocess
import sys
import time

import pytest

from bench.common import make_row, open_loop, percentile
from tests.scratch import ROOT

ROW_KEYS = {"metric", "unit", "count", "errors", "p50", "p95", "p99", "max", "target", "met"}


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) == 0.0


def test_a_row_meets_its_target_only_without_errors():
    fast = [0.001] * 100
    assert make_row("m", fast, target="p99 < 5 ms", limit_ms=5)["met"] is True
    assert make_row("m", fast, errors=1, target="p99 < 5 ms", limit_ms=5)["met"] is False
    assert make_row("m", fast)["met"] is None
    assert make_row("m", [], limit_ms=5)["met"] is None


def test_open_loop_latency_counts_the_wait_behind_a_slow_server():
    """One slot in flight, 20 calls due every 10 ms, each taking 50 ms: the last one is
    due at 190 ms but ends near 1 s, and its latency says so (no coordinated omission)."""

    def slow(index):
        time.sleep(0.05)
        return True, index

    result = open_loop(slow, rate=100, count=20, concurrency=1, max_seconds=10)
    latencies = result.latencies()
    assert len(latencies) == 20 and result.errors == 0
    assert latencies[0] < 0.09
    assert latencies[-1] > 0.7  # ~20 * 50 ms - 190 ms


def test_open_loop_counts_exceptions_and_unsent_calls_as_errors():
    def failing(index):
        raise ConnectionRefusedError

    result = open_loop(failing, rate=1000, count=5, concurrency=2, max_seconds=5)
    assert result.errors == 5
    late = open_loop(lambda i: (True, i), rate=10, count=30, concurrency=2, max_seconds=1)
    assert late.not_sent > 0 and late.errors == late.not_sent


def test_bench_quick_discovery_writes_the_table_json_and_chart(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "discovery", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DISCOVER_FLASK_SERVER -> reply" in done.stdout
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["quick"] is True
    for key in ("cpu_count", "python", "db", "git_commit", "date"):
        assert key in report["machine"]
    [scenario] = report["scenarios"]
    assert scenario["scenario"] == "discovery" and "error" not in scenario
    rows = {row["metric"]: row for row in scenario["rows"]}
    # The real responder, and the same load against a stub: the generator's own floor.
    assert set(rows) == {
        "DISCOVER_FLASK_SERVER -> reply",
        "generator floor (stub responder, no Django)",
    }
    for row in rows.values():
        assert ROW_KEYS <= set(row)
        assert row["unit"] == "ms" and row["count"] > 0 and row["errors"] == 0
        assert row["p50"] <= row["p95"] <= row["p99"] <= row["max"]
    assert rows["generator floor (stub responder, no Django)"]["met"] is None
    assert isinstance(scenario["notes"], list)
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_poll_ceiling_reports_each_servers_best_round_and_its_share_of_hello():
    from bench.poll_ceiling import report

    def round_of(polls: int, status_errors: int = 0, cpu: float = 100.0) -> dict:
        return {
            "requests": polls * 4,
            "cpu_us_per_poll": cpu,
            "polls_per_s": float(polls),
            "errors": status_errors,
            "p50": 1500,
            "p95": 4000,
            "p99": 9000,
            "max": 20000,
        }

    measured = {
        "rounds": {
            "production": [round_of(900, cpu=180.4), round_of(12_000, cpu=95.6)],
            "hello": [round_of(60_000), round_of(40_000)],
            "embedded": [round_of(150, status_errors=3)],
        },
        "labels": {"production": "production", "hello": "hello", "embedded": "embedded"},
        "seconds": 4.0,
        "connections": 64,
    }
    result = report(measured)

    rows = {row["metric"]: row for row in result["rows"]}
    production, hello, embedded = (
        rows[f"idle poll, {label}"] for label in measured["labels"].values()
    )
    assert production["polls_per_s"] == 12_000 and production["ratio_to_hello"] == 0.2
    assert production["met"] is True and production["per_round"] == [900, 12_000]
    assert hello["ratio_to_hello"] == 1.0 and hello["met"] is None
    assert embedded["met"] is False and embedded["errors"] == 3  # short of 2,000 and errors
    assert production["p99"] == 9.0  # wrk's µs, reported in ms
    assert production["cpu_us_per_poll"] == 96  # the least of the rounds
    for row in rows.values():
        assert ROW_KEYS <= set(row)
    assert any("production: 12,000 polls/s" in note for note in result["notes"])


def test_the_hello_application_answers_every_request_with_null():
    from bench.hello_wsgi import application

    answered = []
    body = application({"PATH_INFO": "/esp32/commands/x"}, lambda *a: answered.append(a))
    assert b"".join(body) == b"null" and answered[0][0] == "200 OK"


# --- the fleet's generator (bench/_fleet_generator.py, bench/_fleet_load.py) ----------------


def test_an_answer_is_read_by_its_length_or_its_chunks_and_waits_while_incomplete():
    from bench._fleet_load import parse_response

    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnullHTTP/1.1 200"
    assert parse_response(whole) == (200, b"null", len(whole) - len(b"HTTP/1.1 200"), False)
    assert parse_response(whole[:30]) is None
    assert parse_response(b'HTTP/1.1 202 Accepted\r\ncontent-length: 9\r\n\r\n{"id": 1') is None
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b'3\r\n{"a\r\n2\r\n":\r\n1\r\n1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert parse_response(chunked) == (200, b'{"a":1}', len(chunked), True)
    assert parse_response(chunked[:-3]) is None
    with pytest.raises(ValueError):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_merged_processes_keep_every_figure_and_a_vend_dispensed_in_two_is_doubled():
    from bench._fleet_generator import merge
    from tests.accounting import Dispense, Vend, count_outcomes

    first = {
        "poll": [1.0, 2.0],
        "poll_errors": {"timeout": 1},
        "accepted": ["t1"],
        "dispensed": [["ESP32_A", 1, "t1"]],
        "commands": 1,
        "early_errors": 2,
    }
    second = {
        "poll": [3.0],
        "poll_errors": {"timeout": 2, "HTTP 503": 1},
        "vend_errors": {"HTTP 409 device_offline": 1},
        "accepted": ["t2"],
        "dispensed": [["ESP32_A", 1, "t1"]],
        "commands": 1,
    }
    merged = merge([first, second])
    assert sorted(merged["poll"]) == [1.0, 2.0, 3.0]
    assert merged["poll_errors"] == {"timeout": 3, "HTTP 503": 1}
    assert merged["vend_errors"] == {"HTTP 409 device_offline": 1}
    assert merged["commands"] == 2 and merged["early_errors"] == 2 and merged["confirm"] == []
    vends = [Vend(t, "ESP32_A", 1, "succeeded") for t in merged["accepted"]]
    outcomes = count_outcomes(vends, [Dispense(d, s, t) for d, s, t in merged["dispensed"]])
    assert outcomes.duplicated and outcomes.lost  # t1 twice, t2 never
    with pytest.raises(AssertionError):
        outcomes.check()


def test_a_poll_the_firmware_gave_up_on_is_an_error_and_is_not_sent():
    """A server that accepts and never answers: the request fails at its deadline; one
    whose deadline passed while it waited for a connection is never written."""
    import asyncio
    import socket

    from bench._fleet_load import HttpError, Pool, request_bytes

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = Pool([port], 1)
        raw = request_bytes("GET", "/esp32/commands/ESP32_X")
        try:
            late = loop.time() - 0.01
            with pytest.raises(HttpError, match="waited for a connection"):
                await pool.send(raw, 3.0, deadline=late)
            with pytest.raises(HttpError, match="timeout"):
                await pool.send(raw, 3.0, deadline=loop.time() + 0.3)
        finally:
            pool.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
        listener.settimeout(5)
        peer, _ = listener.accept()  # the one request that was sent
        peer.settimeout(5)
        assert peer.recv(4096).startswith(b"GET /esp32/commands/ESP32_X HTTP/1.1\r\n")
        peer.close()
    finally:
        listener.close()


def test_the_generator_from_two_processes_sends_each_machines_polls_on_its_clock():
    """Against the stub, 40 machines from two processes, 4 s measured: every machine polls
    twice in the window (no more, no less), every vend is answered with an id."""
    import psutil

    from bench._fleet_generator import offer
    from bench._fleet_load import fleet_stack, start_server

    stack = fleet_stack("fleet_test_")
    try:
        ports = start_server(stack, "stub", timeout=30)
        stats = offer(
            ports,
            devices=40,
            seconds=4,
            vend_rate=2,
            keys=["k"],
            procs=2,
            server_processes=[psutil.Process()],
        )
    finally:
        stack.stop()
        stack.close()
    assert stats["poll_errors"] == {} and stats["vend_errors"] == {}
    assert len(stats["poll"]) == 40 * 2
    assert len(stats["vend"]) == 8 and len(set(stats["accepted"])) == 8
    assert stats["unfinished"] == 0
    assert [meter["cpu_seconds"] >= 0 for meter in stats["cpu"]] == [True, True]
