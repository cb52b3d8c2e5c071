"""The soak (``bench/soak.py``, ``make soak``): its verdict on synthetic series, and a short
run of the real machinery (granian, sweeper, discovery, PostgreSQL, Redis db 11, the fleet
generator) at a low rate, judged on its real samples.

The verdict tests run everywhere; the short soak needs PostgreSQL and Redis (marked
``postgres``: skipped on SQLite by tests/faults/conftest.py) and takes about 45 s.
"""

import random

import pytest

from bench import soak
from tests.scratch import databases
from tests.scratch.net import reachable

RSS = soak.THRESHOLDS["rss_mb"]


def rss_series(values, every=10.0):
    return [(i * every, value) for i, value in enumerate(values)]


def sample(t, processes, pg=5, redis=3):
    return {"t": t, "processes": processes, "pg_connections": pg, "redis_clients": redis}


def test_slope_is_per_minute_and_zero_when_undefined():
    assert soak.slope_per_minute([(0, 100.0), (30, 101.0), (60, 102.0)]) == pytest.approx(2.0)
    assert soak.slope_per_minute([(0, 5.0)]) == 0.0
    assert soak.slope_per_minute([(10, 1.0), (10, 3.0)]) == 0.0


def test_a_leak_of_three_mb_a_minute_is_judged_growing():
    noise = random.Random(6)
    values = [100 + 0.5 * i + noise.uniform(-1, 1) for i in range(60)]  # 10 s apart
    verdict = soak.judge(rss_series(values), RSS, since=300)
    assert verdict["flat"] is False
    assert 2.4 < verdict["slope_per_min"] < 3.6
    assert verdict["samples"] == 30


def test_a_flat_series_with_allocator_noise_passes():
    noise = random.Random(7)
    values = [150 + noise.uniform(-1.5, 1.5) for _ in range(60)]
    verdict = soak.judge(rss_series(values), RSS, since=300)
    assert verdict["flat"] is True
    assert abs(verdict["growth"]) <= 3


def test_warm_up_growth_in_the_first_half_is_not_a_leak():
    values = [60 + 2 * i for i in range(30)] + [120.0] * 30  # caches fill, then steady
    assert soak.judge(rss_series(values), RSS, since=300)["flat"] is True
    assert soak.judge(rss_series(values), RSS, since=0)["flat"] is False


def test_a_step_beyond_the_growth_limit_fails_even_with_a_small_slope():
    values = [100.0] * 50 + [100.0 + RSS.growth + 1] * 10
    verdict = soak.judge(rss_series(values), RSS, since=300)
    assert verdict["growth"] == RSS.growth + 1
    assert verdict["flat"] is False


def test_a_wobble_is_not_a_trend_and_too_few_samples_give_no_verdict():
    wobble = rss_series([104.5, 106.0, 104.0, 106.5, 104.2, 106.4, 104.6, 106.1] * 4)
    verdict = soak.judge(wobble, RSS, since=0)
    assert verdict["flat"] is True and verdict["slope_judged"] is True
    assert soak.judge([(20, 100.0), (30, 150.0)], RSS, since=20)["flat"] is None
    assert soak.judge([], RSS, since=0)["flat"] is None


def test_over_a_short_stretch_only_the_growth_limit_applies():
    warming = soak.judge([(30, 108.9), (40, 109.6), (50, 110.5), (60, 111.2)], RSS, since=30)
    assert warming["slope_per_min"] > RSS.slope_per_min and warming["slope_judged"] is False
    assert warming["flat"] is True  # 2.3 MB in 30 s of a one-minute run: warm-up
    jump = soak.judge([(30, 100.0), (40, 105.0), (50, 110.0)], RSS, since=30)
    assert jump["flat"] is False  # 10 MB is past the growth limit however short the run


def test_verdicts_judge_each_process_and_the_stacks_connections():
    samples = []
    for i in range(12):
        processes = {
            "granian main [1]": {"rss_mb": 26.0, "fds": 10, "sockets": 1},
            "granian worker [2]": {"rss_mb": 100.0 + 4 * i, "fds": 20, "sockets": 5},
        }
        if i >= 6:  # a respawned worker is a series of its own
            processes["granian worker [3]"] = {"rss_mb": 90.0, "fds": 20, "sockets": 5}
        samples.append(sample(10.0 * i, processes, pg=6 + i, redis=3))
    judged = soak.verdicts(samples)
    assert judged["granian main [1]"]["rss_mb"]["flat"] is True
    assert judged["granian worker [2]"]["rss_mb"]["flat"] is False
    assert judged["granian worker [3]"]["rss_mb"]["samples"] == 6
    assert judged["stack"]["pg_connections"]["flat"] is False  # one more every 10 s
    assert judged["stack"]["redis_clients"]["flat"] is True
    assert soak.all_flat(judged) is False
    del judged["granian worker [2]"], judged["stack"]
    assert soak.all_flat(judged) is True


def test_workers_sockets_are_judged_together_so_connections_moving_between_them_are_flat():
    """Keep-alive clients that reconnect land on either worker: one worker's sockets rise
    while the other's fall, the sum stays; a leak in one worker still raises the sum."""

    def run(leak: int) -> dict:
        samples = []
        for i in range(30):  # 5 minutes: the second half is long enough to judge a slope
            moved = 3 * i  # connections that went from worker 3 to worker 2
            processes = {
                "granian main [1]": {"rss_mb": 26.0, "fds": 10, "sockets": 0},
                "granian worker [2]": {"rss_mb": 110.0, "fds": 150 + moved, "sockets": 130 + moved},
                "granian worker [3]": {
                    "rss_mb": 110.0,
                    "fds": 150 - moved + leak * i,
                    "sockets": 130 - moved + leak * i,
                },
            }
            samples.append(sample(10.0 * i, processes, pg=19, redis=31))
        return soak.verdicts(samples)

    moving = run(leak=0)
    assert (
        "fds" not in moving["granian worker [2]"] and "sockets" not in moving["granian worker [3]"]
    )
    assert moving["granian workers together"]["sockets"]["flat"] is True
    assert moving["granian workers together"]["fds"]["flat"] is True
    assert moving["granian worker [2]"]["rss_mb"]["flat"] is True
    assert soak.all_flat(moving) is True
    leaking = run(leak=2)  # 2 sockets more every 10 s in worker 3: 12/min
    assert leaking["granian workers together"]["sockets"]["flat"] is False
    assert soak.all_flat(leaking) is False


def _labels(processes: dict) -> list[str]:
    return sorted(name.split(" [")[0] for name in processes)


@pytest.mark.postgres
def test_a_short_soak_samples_every_process_loses_nothing_and_stays_flat():
    if not reachable(6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    result = soak.run(
        devices=20, seconds=10, vend_rate=1.0, every=3.0, keep_logs=False, log=lambda line: None
    )

    samples = result["samples"]
    assert result["server"] == "granian" and result["conn_max_age"] == 60
    assert [s["t"] for s in samples[:3]] == [0.0, 3.0, 6.0]
    assert len(samples) >= 6  # 10 s of vends, the 8 s tail, one every 3 s
    # granian's main process and its two workers (deploy/web.py, WEB_WORKERS 2), by name.
    expected = ["discovery", "granian main", "granian worker", "granian worker", "sweeper"]
    for s in samples:
        assert _labels(s["processes"]) == expected, s["processes"]
        for figures in s["processes"].values():
            assert figures["rss_mb"] > 5 and figures["fds"] > 0
    for s in samples[1:]:
        assert s["poll"]["count"] > 0, s
        assert s["poll"]["errors"] == s["vend"]["errors"] == s["confirm"]["errors"] == 0, s
        # Persistent connections: at most one per granian thread, and two each for the
        # sweeper and discovery (their own and their heartbeat thread's).
        assert 1 <= s["pg_connections"] <= 2 * 8 + 4, s["pg_by_state"]
        assert s["redis_clients"] >= 1
    assert sum(s["vend"]["count"] for s in samples) == 10

    accounting = result["accounting"]
    assert accounting["ok"], accounting
    assert accounting["line"].startswith("outcomes: 10 accepted, 10 dispensed")
    assert accounting["slots"] == 20 * 5
    assert accounting["lost"] == accounting["duplicated"] == accounting["still_open"] == 0

    judged = result["verdicts"]
    # Each process, the workers' descriptors and sockets together, and the stack.
    assert set(judged) == set(samples[-1]["processes"]) | {"granian workers together", "stack"}
    for name, metrics in judged.items():
        if name == "stack":
            wanted = {"pg_connections", "redis_clients"}
        elif name == "granian workers together":
            wanted = set(soak.POOLED_METRICS)
        elif " worker [" in name:
            wanted = set(soak.PROCESS_METRICS) - set(soak.POOLED_METRICS)
        else:
            wanted = set(soak.PROCESS_METRICS)
        assert set(metrics) == wanted, name
        for verdict in metrics.values():
            assert verdict["samples"] >= soak.MIN_POINTS and verdict["flat"] is True, (
                name,
                verdict,
            )
    assert result["flat"] is True
    report = soak.format_report(result)
    assert "verdict: flat, no growth; accounting holds" in report

    # The scratch database is gone.
    import psycopg2

    admin = psycopg2.connect(databases.pg_admin_url(), connect_timeout=3)
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (result["database"],))
            left = cursor.fetchall()
    finally:
        admin.close()
    assert result["database"].startswith("soak_") and not left
