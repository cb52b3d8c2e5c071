"""The benchmark suite: its figures are honest (open-loop, nearest-rank percentiles) and
`bench/run.py` runs a scenario end to end and writes the results docs/benchmarks.md embeds.

The smoke run uses the discovery scenario (a few seconds of UDP on loopback); it writes to
a temporary directory so the committed results are never overwritten.
"""

import json
import subprocess
import sys
import time

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
