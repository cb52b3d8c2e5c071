"""The machines' alert rules: offline (approved machines heard from once) and awaiting
approval (with the action to approve), and the maintenance actions of the admin."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone

from devices.approval import set_approved
from devices.choices import Transport
from devices.models import Device
from tests.factories import DeviceFactory
from vending_site.alerts import registry
from vending_site.alerts.evaluation import evaluate
from vending_site.alerts.models import Alert, AlertRule, AlertState

pytestmark = pytest.mark.django_db


def check(key: str, now=None) -> list[Alert]:
    evaluate(AlertRule.objects.get(key=key), registry.get(key), now=now or timezone.now())
    return list(Alert.objects.filter(rule__key=key).exclude(state=AlertState.RESOLVED))


def test_only_approved_machines_heard_from_once_go_offline():
    long_ago = timezone.now() - timedelta(hours=1)
    gone = DeviceFactory(name="Lobby", last_seen=long_ago)
    DeviceFactory(last_seen=None)  # never seen: nothing to miss
    DeviceFactory(last_seen=long_ago, approved=False)  # never admitted
    DeviceFactory(last_seen=timezone.now() - timedelta(minutes=9))  # within 10 minutes

    (alert,) = check("machine_offline")

    assert alert.subject == f"machine:{gone.device_id}"
    assert alert.title == f"Machine Lobby ({gone.device_id}) is offline"
    assert alert.detail["last_seen"] == long_ago.isoformat()


def test_the_offline_threshold_is_the_rules():
    DeviceFactory(last_seen=timezone.now() - timedelta(minutes=20))
    AlertRule.objects.filter(key="machine_offline").update(threshold=30)

    assert check("machine_offline") == []


def test_a_machine_awaiting_approval_opens_an_info_alert_resolved_by_approving_it(settings):
    settings.DEVICE_APPROVAL_REQUIRED = True
    waiting = DeviceFactory(approved=False, transport=Transport.WIFI)
    DeviceFactory(approved=False, transport=Transport.SERIAL)  # a cable needs no approval

    (alert,) = check("machine_awaiting_approval")

    assert alert.severity == "info"
    assert alert.detail["action"] == {"kind": "approve_machine", "device_id": waiting.device_id}
    set_approved(devices=Device.objects.filter(pk=waiting.pk), approved=True)
    assert check("machine_awaiting_approval") == []


def test_the_admin_mutes_a_machines_alerts_for_two_hours_and_ends_it(client, staff):
    device = DeviceFactory()
    client.force_login(staff)
    url = reverse("admin:devices_device_changelist")

    client.post(url, {"action": "mute_alerts", ACTION_CHECKBOX_NAME: [device.pk]})
    device.refresh_from_db()
    assert device.in_maintenance
    assert device.maintenance_until - timezone.now() > timedelta(hours=1, minutes=59)

    client.post(url, {"action": "end_maintenance", ACTION_CHECKBOX_NAME: [device.pk]})
    device.refresh_from_db()
    assert device.maintenance_until is None and not device.in_maintenance
