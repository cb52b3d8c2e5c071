"""Announcements between processes over Redis pub/sub (vending_site/backends/broadcast.py):
each topic instance stands for one process; Redis is the real one on loopback."""

import pytest

from tests.scratch.net import wait_for
from tests.test_throttling import use_redis_cache
from vending_site.backends.broadcast import Topic


class Holder:
    """What a process keeps, as the topic's callbacks see it."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.resets = 0

    def forget(self, keys: list[str]) -> None:
        self.forgotten += keys

    def reset(self) -> None:
        self.resets += 1


@pytest.fixture
def redis_cache(settings):
    return use_redis_cache(settings)


@pytest.fixture
def topics():
    made = []

    def make() -> tuple[Topic, Holder]:
        holder = Holder()
        topic = Topic(f"test{len(made)}", forget=holder.forget, reset=holder.reset)
        topic.name = "test"  # every instance on one channel, as one topic in two processes
        made.append(topic)
        return topic, holder

    yield make
    for topic in made:
        topic.stop()


def test_an_announcement_reaches_every_listening_process_and_the_publisher_at_once(
    redis_cache, topics
):
    here, mine = topics()
    there, theirs = topics()
    wait_for(lambda: here.listening and there.listening, what="both subscriptions")

    here.publish(["ESP32_A", "ESP32_B"])

    assert mine.forgotten[:2] == ["ESP32_A", "ESP32_B"]  # before publish() returns
    wait_for(lambda: theirs.forgotten == ["ESP32_A", "ESP32_B"], what="the other process")


def test_a_lost_subscription_moves_the_epoch_and_resets_the_holder(redis_cache, topics):
    topic, holder = topics()
    wait_for(lambda: topic.listening, what="the subscription")
    epoch, resets = topic.epoch, holder.resets

    topic.stop()

    assert topic.epoch > epoch
    assert holder.resets > resets
    lost_at = topic.epoch
    wait_for(lambda: topic.listening, what="the subscription made again")
    # What a read begun while deaf kept is gone too, with the tokens of then.
    assert topic.epoch > lost_at


def test_with_redis_unreachable_the_topic_never_claims_to_listen(settings, topics):
    from tests.scratch.net import free_port

    settings.CACHES = {
        "default": {
            "BACKEND": "vending_site.backends.cache.FailOpenRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    topic, holder = topics()

    assert not any(topic.listening for _ in range(20))
    topic.publish(["ESP32_A"])  # logged, not raised; this process still forgets
    assert holder.forgotten == ["ESP32_A"]


def test_without_redis_an_announcement_reaches_another_process_at_its_next_look(
    settings, tmp_path, topics
):
    settings.DATA_DIR = tmp_path
    here, mine = topics()
    there, theirs = topics()
    assert here.listening and there.listening
    assert not there.catch_up()  # its first look: nothing to hear yet

    here.publish(["ESP32_A"])
    here.publish(["ESP32_B", "ESP32_C"])

    assert mine.forgotten == ["ESP32_A", "ESP32_B", "ESP32_C"]
    assert theirs.forgotten == []  # until it looks
    assert not there.catch_up()
    assert theirs.forgotten == ["ESP32_A", "ESP32_B", "ESP32_C"]
    assert not there.catch_up()  # heard once
    assert theirs.forgotten == ["ESP32_A", "ESP32_B", "ESP32_C"]


def test_without_redis_a_line_still_being_written_waits_for_its_end(settings, tmp_path, topics):
    settings.DATA_DIR = tmp_path
    there, theirs = topics()
    there.catch_up()
    path = tmp_path / "run" / "broadcast-test.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as stream:
        stream.write("ESP32_A\nESP32_")
        stream.flush()
        # The first look saw no file: this one reads it from its start.
        assert there.catch_up()  # the half line: not to be trusted yet
        assert theirs.forgotten == ["ESP32_A"]
        stream.write("B\n")

    assert not there.catch_up()
    assert theirs.forgotten == ["ESP32_A", "ESP32_B"]


def test_without_redis_a_file_started_afresh_drops_everything(settings, tmp_path, topics):
    settings.DATA_DIR = tmp_path
    here, _mine = topics()
    there, theirs = topics()
    there.catch_up()
    here.publish(["ESP32_A"])
    there.catch_up()
    epoch, resets = there.epoch, theirs.resets

    path = tmp_path / "run" / "broadcast-test.log"
    path.rename(path.with_suffix(".old"))  # as the publisher does past FILE_LIMIT
    here.publish(["ESP32_B"])
    there.catch_up()

    assert (there.epoch, theirs.resets) == (epoch + 1, resets + 1)
