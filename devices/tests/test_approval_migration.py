"""Devices that existed before approval did were trusted: they migrate as approved, even
when the operator already switched DEVICE_APPROVAL_REQUIRED on."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("devices", "0004_serial_port")]
AFTER = [("devices", "0005_device_approval_and_token")]


@pytest.mark.django_db(transaction=True)
def test_existing_devices_migrate_as_approved_and_the_group_exists(settings):
    settings.DEVICE_APPROVAL_REQUIRED = True
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old_apps = executor.loader.project_state(BEFORE).apps
    old_apps.get_model("devices", "Device").objects.create(device_id="ESP32_0000000000AA")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new_apps = executor.loader.project_state(AFTER).apps

    device = new_apps.get_model("devices", "Device").objects.get(device_id="ESP32_0000000000AA")
    assert device.approved is True
    assert new_apps.get_model("auth", "Group").objects.filter(name="vend-client").exists()
    # Back to the latest schema (later tests share this database); a machine created there
    # by staff is approved; one that announces itself waits (devices/tests/test_access.py).
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    from devices.models import Device

    assert Device.objects.get(device_id="ESP32_0000000000AA").approved is True
    assert Device.objects.create(device_id="ESP32_0000000000BB").approved is True


@pytest.mark.django_db(transaction=True)
def test_machines_approved_before_binding_are_bound_to_the_address_they_reported():
    """The upgrade keeps a fleet running: each approved WiFi machine is bound to the address
    it reported; one with none stays unbound (staff accept the address it asks from)."""
    before, after = (
        [("devices", "0006_device_admission")],
        [("devices", "0007_bind_approved_machines")],
    )
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    Device = executor.loader.project_state(before).apps.get_model("devices", "Device")
    Device.objects.create(device_id="ESP32_0000000000A1", ip_address="192.168.1.105")
    Device.objects.create(device_id="ESP32_0000000000A2")
    Device.objects.create(device_id="ESP32_0000000000A3", ip_address="10.0.0.3", approved=False)

    executor = MigrationExecutor(connection)
    executor.migrate(after)
    Device = executor.loader.project_state(after).apps.get_model("devices", "Device")
    bound = dict(Device.objects.values_list("device_id", "bound_address"))
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert bound == {
        "ESP32_0000000000A1": "192.168.1.105",
        "ESP32_0000000000A2": None,
        "ESP32_0000000000A3": None,  # pending: staff approve the address it asks from
    }
