"""Throttle hits counted in memory and added to the shared counters later
(vending_site/http/deferred_throttle.py): the same keys and windows as the throttles, so a
limit holds across the two ways of counting."""

import time

import pytest
from django.core.cache import cache

from vending_site.http.deferred_throttle import DeferredWindows
from vending_site.http.throttling import count_hits

KEY = "throttle_device_ESP32_AAAAAAAAAAAA_AT_127_0_0_1"
RATE = (10, 60)


@pytest.fixture
def windows():
    counting = DeferredWindows()
    yield counting
    counting.ticker.stop()


def window() -> int:
    return int(time.time() // RATE[1])


def shared_total() -> int:
    return cache.get(f"{KEY}:{window()}", 0)


def allowed(windows: DeferredWindows, tries: int) -> int:
    return sum(windows.allow([(KEY, RATE)]) for _ in range(tries))


def test_hits_reach_the_shared_counter_at_the_flush(windows):
    assert allowed(windows, 4) == 4
    assert shared_total() == 0

    windows.flush()

    assert shared_total() == 4


def test_what_the_throttle_counted_first_counts_against_the_rate(windows):
    hits, before = count_hits(cache, [(KEY, window(), RATE[1])])[0]  # the first poll's
    windows.learn(KEY, window=window(), period=RATE[1], total=hits, before=before)

    assert allowed(windows, 20) == 9  # 10 in all


def test_a_refusal_adds_this_process_hits_at_once_so_the_throttle_sees_them(windows):
    assert allowed(windows, 11) == 10

    assert shared_total() == 10  # without waiting for the flush


def test_another_process_hits_count_once_learnt_at_a_flush(windows):
    other = DeferredWindows()
    assert allowed(other, 7) == 7
    other.flush()
    windows.allow([(KEY, RATE)])
    windows.flush()  # learns the shared total, 8

    assert allowed(windows, 10) == 2


def test_nothing_is_counted_when_one_of_the_limits_refuses(windows):
    by_address = "throttle_device-address_127.0.0.1"
    assert windows.allow([(by_address, (100, 60)), (KEY, (1, 60))])

    assert not windows.allow([(by_address, (100, 60)), (KEY, (1, 60))])

    windows.flush()
    assert cache.get(f"{by_address}:{window()}") == 1


def test_no_rate_means_no_limit_and_no_count(windows):
    assert all(windows.allow([(KEY, None)]) for _ in range(50))

    windows.flush()

    assert shared_total() == 0
    assert windows.rate("") is None
    assert windows.rate("600/min") == (600, 60)


def test_totals_of_windows_gone_by_are_forgotten_at_the_next_flush(windows):
    """Learnt for every machine that polls: kept only while they can weigh in an estimate."""
    windows.learn(KEY, window=window() - 2, period=RATE[1], total=5, before=0)
    windows.learn("another", window=window(), period=RATE[1], total=1, before=0)
    windows.allow([("a third", RATE)])

    windows.flush()

    assert set(windows._known) == {"another", "a third"}


def test_hits_not_yet_added_weigh_in_the_next_window_as_the_throttle_weighs_them(windows):
    """A burst at the end of a minute is not forgotten by the first request of the next
    one (the sliding estimate counts the window before), flushed or not."""
    start = (window() + 1) * RATE[1]
    windows.clock = lambda: start - 0.01
    windows.learn(KEY, window=window(), period=RATE[1], total=1, before=0)  # the throttle's
    assert allowed(windows, 9) == 9  # 10 in all, none added yet

    windows.clock = lambda: start + 0.01  # the next window has just begun

    assert not windows.allow([(KEY, RATE)])  # 10 * (1 - 0.01 / 60) + 1 > 10
