"""``manage.py run_notifier`` as a real process: it sends, stops cleanly on SIGTERM, and when
SIGKILLed mid-batch loses nothing (the lease runs out and another notifier sends again)."""

import signal

import pytest

from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import wait_for
from vending_site.models import ServiceHeartbeat
from vending_site.notify.events import emit
from vending_site.notify.models import Delivery, Endpoint
from vending_site.tests.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

NOTIFIER_ENV = {
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "NOTIFY_BACKOFF_BASE": "0",
    "NOTIFY_LEASE_SECONDS": "2",
    "NOTIFY_TIMEOUT": "2",
    "SERVICE_HEARTBEAT_SECONDS": "0.2",
}


def test_the_notifier_sends_and_stops_cleanly_on_sigterm():
    receiver = Receiver().start()
    try:
        receiver.secret = Endpoint.objects.create(
            name="erp", url=receiver.url, event_types=["vend.failed"]
        ).secret
        message = emit("vend.failed", {"id": "7", "state": "failed"}, subject="vend:7")
        process = start_command("run_notifier", **NOTIFIER_ENV)
        try:
            read_until(process, "notifier ")
            (got,) = receiver.wait_for(1, timeout=15)
            wait_for(
                lambda: ServiceHeartbeat.objects.filter(name="notifier").exists(),
                timeout=30,
                what="heartbeat",
            )
        finally:
            code, output = stop(process)
        assert code == 0, output
        assert "notifier stopped" in output
        assert got.verified and got.headers["webhook-id"] == message.msg_id
        assert ServiceHeartbeat.objects.get(name="notifier").stopped_at is not None
    finally:
        receiver.stop()


def test_a_notifier_killed_mid_batch_loses_no_delivery():
    receiver = Receiver(delay=0.5).start()  # slow: the kill lands with sends in flight
    try:
        receiver.secret = Endpoint.objects.create(
            name="erp", url=receiver.url, event_types=["vend.succeeded"]
        ).secret
        messages = [emit("vend.succeeded", {"id": str(n)}, subject=f"vend:{n}") for n in range(20)]
        first = start_command("run_notifier", "--workers", "4", **NOTIFIER_ENV)
        try:
            receiver.wait_for(3, timeout=20)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            stop(first)
        assert Delivery.objects.filter(state="pending").exists()
        receiver.delay = 0.0
        second = start_command("run_notifier", **NOTIFIER_ENV)
        try:
            wait_for(
                lambda: not Delivery.objects.exclude(state="delivered").exists(),
                timeout=30,
                what="every delivery delivered",
            )
        finally:
            code, output = stop(second)
        assert code == 0, output
        arrived = set(receiver.ids())
        assert {m.msg_id for m in messages} <= arrived  # at least once each
        assert all(r.verified for r in receiver.received)
    finally:
        receiver.stop()
