"""Recording discovery exchanges: after the answer, in batches, bounded, and nothing lost."""

import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from devices.choices import Direction, Transport
from devices.discovery import Recorder
from devices.models import CommunicationLog
from devices.services import Exchange, log_exchanges
from tests.scratch.children import read_until, start_command, stop
from vending_site.models import LiveEvent


def test_the_recorder_writes_what_queued_as_one_batch_and_drains_on_close():
    batches = []
    recorder = Recorder(batches.append, linger=0.3).start()
    for n in range(50):
        recorder.submit(n)
    assert recorder.close(timeout=5)
    assert [item for batch in batches for item in batch] == list(range(50))
    assert len(batches) <= 2  # 50 items in well under the linger time: not one write each
    assert recorder.recorded == 50 and recorder.unrecorded == 0


def test_a_full_recorder_queue_counts_what_it_refuses_and_never_blocks_the_submitter():
    release = threading.Event()
    written = []

    def slow_write(batch):
        release.wait(30)
        written.extend(batch)

    recorder = Recorder(slow_write, capacity=10, batch=1, linger=0).start()
    submitter = threading.Thread(target=lambda: [recorder.submit(n) for n in range(100)])
    submitter.start()
    submitter.join(10)  # the writer is held until release: a blocking submit never returns
    assert not submitter.is_alive(), "submit() blocked while the writer was busy"
    release.set()
    assert recorder.close(timeout=5)
    assert 10 <= len(written) <= 12  # the queue's 10, plus what the writer held
    assert recorder.recorded == len(written)
    assert recorder.refused == 100 - len(written) and recorder.failed == 0


def test_a_failed_write_is_counted_and_the_next_batch_is_still_written():
    written = []

    def flaky(batch):
        if 0 in batch:
            raise RuntimeError("database went away")
        written.extend(batch)

    recorder = Recorder(flaky, batch=1, linger=0).start()
    for n in range(3):
        recorder.submit(n)
    assert recorder.close(timeout=5)
    assert written == [1, 2]
    assert recorder.failed == 1 and recorder.refused == 0 and recorder.recorded == 2


@pytest.mark.django_db
def test_a_batch_of_exchanges_is_two_inserts_stamped_with_their_own_times(
    django_assert_max_num_queries,
):
    answered = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    exchanges = [
        Exchange(
            direction=Direction.IN,
            transport=Transport.WIFI,
            endpoint="udp discovery",
            remote_addr=f"10.0.0.{n}",
            message=f"DISCOVER_FLASK_SERVER\x00 -> FLASK_SERVER_IP:10.0.0.1 #{n}",
            at=answered + timedelta(seconds=n),
        )
        for n in range(40)
    ]
    # Two INSERTs, and the savepoint pair the test's own transaction adds around them.
    with django_assert_max_num_queries(4):
        entries = log_exchanges(exchanges)
    assert [entry.remote_addr for entry in entries] == [f"10.0.0.{n}" for n in range(40)]
    stored = list(CommunicationLog.objects.order_by("pk"))
    assert [entry.created_at for entry in stored] == [x.at for x in exchanges]
    assert "\x00" not in stored[0].message and "\\x00" in stored[0].message
    events = list(LiveEvent.objects.filter(kind="log").order_by("pk"))
    assert [event.payload["id"] for event in events] == [entry.pk for entry in stored]


def _ask_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(2)
    sock.sendto(b"DISCOVER_FLASK_SERVER", ("127.0.0.1", port))
    return sock


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_run_discovery_records_every_answer_of_a_burst_stamped_when_it_was_answered():
    """300 requests from 100 senders within a fraction of a second: every one is answered,
    and every one is in the log, stamped no later than its answer arrived (the former
    one-write-per-datagram recorder fell seconds behind such a burst)."""
    process = start_command("run_discovery", "--host", "127.0.0.1", "--port", "0")
    try:
        line = read_until(process, "discovery listening on udp")
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        began = time.time()
        answered_by = 0.0
        for _ in range(3):
            asked = [_ask_from(f"127.0.0.{10 + n}", port) for n in range(100)]
            for sock in asked:
                with sock:
                    assert sock.recvfrom(64)[0] == b"FLASK_SERVER_IP:127.0.0.1"
            answered_by = time.time()
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "answered 300, rate-limited 0" in output and "not recorded" not in output
    entries = CommunicationLog.objects.filter(endpoint="udp discovery")
    assert entries.count() == 300
    assert len({entry.remote_addr for entry in entries}) == 100
    slack = timedelta(milliseconds=50)  # the two clocks are one clock; this is rounding room
    for entry in entries:
        assert began - 0.05 <= entry.created_at.timestamp()
        assert entry.created_at <= datetime.fromtimestamp(answered_by, tz=UTC) + slack
