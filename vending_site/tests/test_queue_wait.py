"""How long a request waited (vending_site/http/queue_wait.py): nginx's X-Request-Start in
the forms proxies send it, and the ASGI front's own stamp."""

import time

import pytest

from vending_site.http.queue_wait import ARRIVED, HEADER, HopQueue, header_age, waited

NOW = 1_765_150_000.0


@pytest.mark.parametrize(
    ("value", "age"),
    [
        ("t=1765149998.500", 1.5),  # nginx's $msec
        ("1765149998.5", 1.5),
        ("t=1765149998500", 1.5),  # milliseconds
        ("t=1765149998500000", 1.5),  # microseconds
        ("t=1765150009.0", 0.0),  # in the future: a clock ahead, or a sender's wish
        ("t=", 0.0),
        ("yesterday", 0.0),
        ("t=nan", 0.0),
        ("t=-5", 0.0),
    ],
)
def test_the_request_start_header_is_read_in_every_proxy_form_and_nonsense_is_no_wait(value, age):
    assert header_age(value, NOW) == pytest.approx(age)


def test_a_request_waited_the_longer_of_the_proxy_and_the_hop():
    now = time.monotonic()

    assert waited({}) == 0.0
    assert waited({ARRIVED: now - 2}) >= 2
    assert waited({ARRIVED: now, HEADER: f"t={time.time() - 3:.3f}"}) > 2.99  # ms resolution


def test_the_expected_wait_is_the_queue_times_the_thread_time_per_request():
    queue = HopQueue()
    for _ in range(200):
        queue.served(0.01)
    queue.entered, queue.started = 60, 10

    assert queue.expected_wait() == pytest.approx(0.5, rel=0.01)
