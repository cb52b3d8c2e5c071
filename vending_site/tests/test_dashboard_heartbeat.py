"""Heartbeats of the long-running processes, as recorded and as the dashboard shows them."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import wait_for
from vending_site.models import LiveEvent, ServiceHeartbeat
from vending_site.processes import heartbeat
from vending_site.processes.heartbeat import (
    DISCOVERY,
    SWEEPER,
    ServiceState,
    record_beat,
    record_start,
    record_stop,
    services_state,
)

MACHINES_URL = "/dashboard/api/machines"


def states() -> dict[str, str]:
    return {entry["name"]: entry["state"] for entry in services_state()}


@pytest.mark.django_db
def test_services_never_started_are_listed_as_such():
    assert states() == {
        "discovery": ServiceState.NEVER_STARTED,
        "serial_bridge": ServiceState.NEVER_STARTED,
        "sweeper": ServiceState.NEVER_STARTED,
        "notifier": ServiceState.NEVER_STARTED,
    }


@pytest.mark.django_db
def test_a_recorded_start_shows_running_and_tells_open_pages():
    record_start(DISCOVERY, detail={"listening": "0.0.0.0:12346"})

    assert states()[DISCOVERY] == ServiceState.RUNNING
    event = LiveEvent.objects.get(kind="service")
    assert event.payload["name"] == DISCOVERY
    assert event.payload["state"] == ServiceState.RUNNING
    assert event.payload["detail"] == {"listening": "0.0.0.0:12346"}


@pytest.mark.django_db
def test_a_beat_is_one_update_and_publishes_nothing(django_assert_num_queries):
    row = record_start(SWEEPER)
    ServiceHeartbeat.objects.filter(pk=row.pk).update(beat_at=row.beat_at - timedelta(seconds=9))

    with django_assert_num_queries(1):
        assert record_beat(SWEEPER) is True

    assert ServiceHeartbeat.objects.get(pk=row.pk).beat_at > row.beat_at - timedelta(seconds=9)
    assert LiveEvent.objects.filter(kind="service").count() == 1  # the start only


@pytest.mark.django_db
def test_a_clean_stop_shows_stopped_and_tells_open_pages():
    record_start(SWEEPER)

    record_stop(SWEEPER)

    assert states()[SWEEPER] == ServiceState.STOPPED
    last = LiveEvent.objects.filter(kind="service").order_by("-id").first()
    assert last.payload["state"] == ServiceState.STOPPED
    assert record_beat(SWEEPER) is False  # a stopped row is not revived by a late beat


@pytest.mark.django_db
def test_a_process_that_died_silently_is_stopped_once_its_heartbeat_is_stale(settings):
    settings.SERVICE_HEARTBEAT_SECONDS = 5
    row = record_start(DISCOVERY)
    now = row.beat_at

    assert heartbeat.service_state(row, now=now + timedelta(seconds=14)) == ServiceState.RUNNING
    assert heartbeat.service_state(row, now=now + timedelta(seconds=16)) == ServiceState.STOPPED


@pytest.mark.django_db
def test_another_process_does_not_stop_the_row_it_does_not_own():
    record_start(DISCOVERY)
    ServiceHeartbeat.objects.filter(name=DISCOVERY).update(pid=1)

    record_stop(DISCOVERY)

    assert states()[DISCOVERY] == ServiceState.RUNNING


@pytest.mark.django_db
def test_the_machines_endpoint_lists_the_services(staff):
    record_start(DISCOVERY)
    client = Client()
    client.force_login(staff)

    body = client.get(MACHINES_URL).json()

    assert [s["name"] for s in body["services"]] == [
        "discovery",
        "serial_bridge",
        "sweeper",
        "notifier",
    ]
    assert body["services"][0]["state"] == ServiceState.RUNNING
    assert body["service_stale_after"] > 0


@pytest.mark.system
def test_a_real_discovery_listener_shows_running_then_stopped_after_sigterm(
    transactional_db, staff
):
    client = Client()
    client.force_login(staff)

    def discovery_state() -> str:
        return client.get(MACHINES_URL).json()["services"][0]["state"]

    assert discovery_state() == ServiceState.NEVER_STARTED
    process = start_command("run_discovery", "--host", "127.0.0.1", "--port", "0")
    try:
        read_until(process, "discovery listening")
        wait_for(lambda: discovery_state() == ServiceState.RUNNING, what="discovery running")
        row = ServiceHeartbeat.objects.get(name=DISCOVERY)
        assert row.pid == process.pid
        assert row.detail["listening"].startswith("127.0.0.1:")
    finally:
        code, output = stop(process)

    assert code == 0, output
    assert discovery_state() == ServiceState.STOPPED
    assert ServiceHeartbeat.objects.get(name=DISCOVERY).stopped_at <= timezone.now()
