"""/metrics: our counters and gauges, across processes, and who may read them.

The multiprocess directory is shared by every process of a test run (xdist workers too), so
scraped counters are compared as "moved by at least", and this process' own contribution
(its ``counter_<pid>.db`` file) exactly. Gauges come from this test's own database: exact.
"""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from devices.choices import CommandState
from devices.models import Command
from tests.scratch.children import child_env
from transactions.choices import TransactionState
from transactions.models import Transaction
from vending_site.observability import metrics

DEVICE = "ESP32_6CC8404FE03C"
MAC = "6C:C8:40:4F:E0:3C"
SUBPROCESS_TIMEOUT = 90


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def own_file_value(name: str, **labels) -> float:
    """This process' own contribution to a counter, read from its multiprocess file."""
    path = metrics.multiproc_dir() / f"counter_{os.getpid()}.db"
    if not path.exists():
        return 0.0
    for key, val, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
        if f'"{name}"' in key and all(f'"{k}": "{v}"' in key for k, v in labels.items()):
            return val
    return 0.0


def test_metrics_are_refused_to_public_addresses(client):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_a_forwarded_public_client_is_refused_even_through_a_local_proxy(client):
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert response.status_code == 403


def test_private_networks_may_scrape(client, db):
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.20").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_django_request_metrics_are_exposed(client, db):
    client.get("/status")
    samples = scrape(client)
    assert any(name.startswith("django_http_requests") for name, _ in samples)


@pytest.mark.django_db(transaction=True)
def test_a_vend_completed_by_poll_and_confirm_moves_counter_histogram_and_gauges(
    client, client_for, user, online_device
):
    before = scrape(client)
    own_before = own_file_value("vending_vends_total", outcome="succeeded")
    polls_before = own_file_value("vending_device_polls_total", dialect="wifi_v2")

    response = client_for(user).post("/api/v1/vend/3", {}, format="json")
    assert response.status_code == 202, response.content
    queued = scrape(client)
    assert value(queued, "vending_command_queue_depth", state="queued") == 1
    assert value(queued, "vending_devices_online") == 1

    command = client.get(f"/esp32/commands/{DEVICE}").json()
    assert command["command"] == "VEND" and command["slot"] == 3
    sent = scrape(client)
    assert value(sent, "vending_command_queue_depth", state="queued") == 0
    assert value(sent, "vending_command_queue_depth", state="sent") == 1

    confirm = client.post(
        "/esp32/confirm",
        {"device_id": MAC, "slot": 3, "success": True, "message": "Item dispensed successfully"},
        content_type="application/json",
    )
    assert confirm.json()["state"] == "succeeded"
    after = scrape(client)

    assert own_file_value("vending_vends_total", outcome="succeeded") == own_before + 1
    assert own_file_value("vending_device_polls_total", dialect="wifi_v2") == polls_before + 1
    assert value(after, "vending_vends_total", outcome="succeeded") >= (
        value(before, "vending_vends_total", outcome="succeeded") + 1
    )
    assert value(after, "vending_vend_duration_seconds_count", outcome="succeeded") >= (
        value(before, "vending_vend_duration_seconds_count", outcome="succeeded") + 1
    )
    assert value(after, "vending_vend_duration_seconds_bucket", outcome="succeeded", le="+Inf") >= 1
    assert value(after, "vending_command_queue_depth", state="sent") == 0
    assert value(after, "vending_device_polls_total", dialect="wifi_v2") >= 1


@pytest.mark.django_db(transaction=True)
def test_a_transition_that_rolls_back_is_not_counted(online_device, user):
    from django.db import transaction as db_transaction

    from transactions.lifecycle import transition
    from transactions.services import request_vend

    txn = request_vend(device=online_device, slot_number=2, user=user)
    before = own_file_value("vending_vends_total", outcome="cancelled")

    class Abort(Exception):
        pass

    with pytest.raises(Abort), db_transaction.atomic():
        transition(txn, TransactionState.CANCELLED)
        raise Abort

    assert own_file_value("vending_vends_total", outcome="cancelled") == before


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_a_vend_expired_by_the_sweeper_process_shows_in_the_web_metrics(
    client, client_for, user, online_device
):
    before = value(scrape(client), "vending_vends_total", outcome="expired")
    own_before = own_file_value("vending_vends_total", outcome="expired")
    assert client_for(user).post("/api/v1/vend/1", {}, format="json").status_code == 202
    Command.objects.filter(state=CommandState.QUEUED).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    child = subprocess.run(
        [sys.executable, "manage.py", "sweep_commands"],
        cwd=metrics.settings.BASE_DIR,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "expired 1" in child.stdout
    assert Transaction.objects.get().state == TransactionState.EXPIRED

    after = value(scrape(client), "vending_vends_total", outcome="expired")
    assert after >= before + 1
    # Counted by the child, not by this process.
    assert own_file_value("vending_vends_total", outcome="expired") == own_before


@pytest.mark.django_db(transaction=True)
def test_a_vend_never_confirmed_counts_as_unconfirmed_and_shows_in_the_gauge(
    client, client_for, user, online_device
):
    from transactions.services import sweep

    before = own_file_value("vending_vends_unconfirmed_total")
    assert client_for(user).post("/api/v1/vend/4", {}, format="json").status_code == 202
    assert client.get(f"/esp32/commands/{DEVICE}").json()["slot"] == 4
    Transaction.objects.update(sent_at=timezone.now() - timedelta(hours=1))

    assert sweep().unconfirmed == 1

    assert own_file_value("vending_vends_unconfirmed_total") == before + 1
    samples = scrape(client)
    assert value(samples, "vending_unconfirmed_vends") == 1
    assert value(samples, "vending_command_queue_depth", state="sent") == 1


def test_compaction_folds_dead_processes_into_the_archive(tmp_path):
    dead_pid = _exited_pid()
    key = '["demo_total", "demo_total", {"outcome": "ok"}, "help"]'
    for pid, amount in ((dead_pid, 2.0), (os.getpid(), 5.0)):
        mmap = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        mmap.write_value(key, amount, 0.0)
        mmap.close()
    archive = MmapedDict(str(tmp_path / "counter_archive.db"))
    archive.write_value(key, 3.0, 0.0)
    archive.close()
    (tmp_path / f"gauge_livesum_{dead_pid}.db").write_bytes(b"")

    assert metrics.compact_dead_processes(tmp_path) == 2

    names = {p.name for p in tmp_path.glob("*.db")}
    assert names == {"counter_archive.db", f"counter_{os.getpid()}.db"}
    archive_file = str(tmp_path / "counter_archive.db")
    archived = {k: v for k, v, _t, _p in MmapedDict.read_all_values_from_file(archive_file)}
    assert archived[key] == 5.0


def test_compaction_without_an_archive_creates_one_and_leaves_no_draft(tmp_path):
    key = '["demo_total", "demo_total", {}, "help"]'
    dead = MmapedDict(str(tmp_path / f"counter_{_exited_pid()}.db"))
    dead.write_value(key, 4.0, 0.0)
    dead.close()

    assert metrics.compact_dead_processes(tmp_path) == 1

    assert sorted(p.name for p in tmp_path.iterdir()) == [".compact.lock", "counter_archive.db"]
    archive_file = str(tmp_path / "counter_archive.db")
    assert [v for _k, v, _t, _p in MmapedDict.read_all_values_from_file(archive_file)] == [4.0]


def test_a_scrape_waits_for_a_compaction_in_progress(tmp_path):
    """Mid-compaction a count can sit in the archive and in the dead process' file at once;
    a scrape that read then would count it twice, so it takes the lock shared and waits."""
    import fcntl
    import threading

    key = '["demo_total", "demo_total", {}, "help"]'
    counts = MmapedDict(str(tmp_path / "counter_1.db"))
    counts.write_value(key, 2.0, 0.0)
    counts.close()
    collected = threading.Event()
    collector = metrics.SharedFilesCollector(tmp_path)

    with open(tmp_path / ".compact.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reader = threading.Thread(target=lambda: (list(collector.collect()), collected.set()))
        reader.start()
        assert not collected.wait(0.5), "the scrape read files while a compaction held the lock"
    assert collected.wait(10)
    reader.join(10)


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait(timeout=10)
    return child.pid


def test_metrics_sum_the_files_of_services_in_their_own_subdirectories(
    db, client, settings, tmp_path
):
    """The compose layout: one directory per container, all under METRICS_COLLECT_DIR."""
    from prometheus_client.mmap_dict import mmap_key

    key = mmap_key(
        "vending_vends", "vending_vends_total", ["outcome"], ["succeeded"], "Vends by outcome."
    )
    for service, count in [("web1", 3.0), ("sweeper", 4.0)]:
        directory = tmp_path / service
        directory.mkdir()
        # Both containers' main process is pid 1: same file name, different directories.
        counts = MmapedDict(str(directory / "counter_1.db"))
        counts.write_value(key, count, 0.0)
        counts.close()
    settings.METRICS_COLLECT_DIR = str(tmp_path)

    samples = scrape(client)

    assert value(samples, "vending_vends_total", outcome="succeeded") == 7.0


# --- The tally of hot paths (metrics.Tally) ---------------------------------------------


def test_a_tally_writes_what_direct_calls_would_once_flushed():
    """Summed in memory and written by the flush, counters and histograms end where the
    same inc() and observe() calls would have left them (this pins prometheus_client's
    bucket rule and the private parts Tally writes through)."""
    import uuid

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from vending_site.observability.metrics import Tally

    registry = CollectorRegistry()
    name = f"t{uuid.uuid4().hex[:8]}"
    buckets = (0.001, 0.01, 0.1, 1.0)
    direct = Histogram(f"{name}_direct", "d", buckets=buckets, registry=registry)
    tallied = Histogram(f"{name}_tallied", "t", buckets=buckets, registry=registry)
    count_direct = Counter(f"{name}_cd", "c", registry=registry)
    count_tallied = Counter(f"{name}_ct", "c", registry=registry)
    tally = Tally()
    values = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 7.0]
    for value in values:
        direct.observe(value)
        count_direct.inc()
        tally.add([count_tallied], [(tallied, value)])
    assert tallied._sum.get() == 0  # not yet written

    tally.flush()
    tally.ticker.stop()

    assert tallied._sum.get() == pytest.approx(direct._sum.get())
    assert [b.get() for b in tallied._buckets] == [b.get() for b in direct._buckets]
    assert count_tallied._value.get() == count_direct._value.get() == len(values)
