"""An alert from its condition to the people and systems told of it, with every part real:
the notifier process evaluates the rules, a local SMTP server (aiosmtpd) receives the e-mail,
a local HTTP receiver verifies every webhook's signature. A machine silent for an hour is one
alert, told once per channel however many checks see it, and resolved when it is back."""

import time
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from devices.models import Device
from tests.factories import DeviceFactory
from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port, wait_for
from vending_site.alerts.models import Alert, AlertState
from vending_site.notify.models import Endpoint, EndpointKind
from vending_site.tests.webhook_receiver import Receiver, SmtpInbox

pytestmark = pytest.mark.django_db(transaction=True)

MACHINE = "ESP32_A1E27000E2E0"


def test_an_offline_machine_is_one_alert_told_once_per_channel_then_resolved():
    inbox = SmtpInbox()
    smtp_port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    receiver = Receiver().start()
    try:
        receiver.secret = Endpoint.objects.create(
            name="erp",
            url=receiver.url,
            event_types=["alert.opened", "alert.resolved", "machine.offline", "machine.online"],
        ).secret
        Endpoint.objects.create(
            name="staff",
            kind=EndpointKind.EMAIL,
            recipients="ops@example.org",
            event_types=["alert.opened", "alert.resolved"],
            filters={"rule": ["machine_offline"]},
        )
        DeviceFactory(device_id=MACHINE, last_seen=timezone.now() - timedelta(hours=1))
        notifier = start_command(
            "run_notifier",
            WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
            ALERT_CHECK_SECONDS="1",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=str(smtp_port),
            SERVICE_HEARTBEAT_SECONDS="0.5",
        )
        try:
            read_until(notifier, "notifier ")
            receiver.wait_for(2, timeout=20)
            wait_for(lambda: len(inbox.messages) >= 1, timeout=30, what="the e-mail")
            time.sleep(3.5)  # three more checks see the machine still offline
            opened = sorted(r.payload["type"] for r in receiver.received)
            assert opened == ["alert.opened", "machine.offline"]
            assert len(inbox.messages) == 1
            assert f"Machine {MACHINE} is offline" in inbox.messages[0].content.decode()
            assert Alert.objects.filter(subject=f"machine:{MACHINE}").count() == 1

            Device.objects.filter(device_id=MACHINE).update(last_seen=timezone.now())
            receiver.wait_for(4, timeout=20)
            wait_for(lambda: len(inbox.messages) >= 2, timeout=30, what="the resolution e-mail")
        finally:
            code, output = stop(notifier)
        assert code == 0, output
    finally:
        receiver.stop()
        smtp.stop()

    kinds = [r.payload["type"] for r in receiver.received]
    assert sorted(kinds) == ["alert.opened", "alert.resolved", "machine.offline", "machine.online"]
    assert all(r.verified for r in receiver.received)
    subjects = {r.payload["data"]["subject"] for r in receiver.received}
    assert subjects == {f"machine:{MACHINE}"}
    alert = Alert.objects.get(subject=f"machine:{MACHINE}")
    assert alert.state == AlertState.RESOLVED and alert.resolved_by is None
    assert len(inbox.messages) == 2
