"""Bind the WiFi machines approved before binding existed to the address they reported.

Without this, an approved machine with no bound address is refused until staff accept the
address it asks from (devices/access.py), which would stop every machine of a fleet at the
upgrade. The address a machine reports when it registers is its own on the LAN, which is
what the server sees when nothing translates addresses in between; a machine whose requests
come from elsewhere (NAT, a new DHCP lease) is refused and shows "moved to <address>" until
staff accept it. A machine with no valid reported address stays unbound.
"""

import ipaddress

from django.db import migrations


def bind_to_reported_address(apps, schema_editor):
    Device = apps.get_model("devices", "Device")
    machines = Device.objects.filter(approved=True, transport="wifi", bound_address__isnull=True)
    for pk, reported in machines.exclude(ip_address__isnull=True).values_list("pk", "ip_address"):
        try:
            ip = ipaddress.ip_address(reported)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        Device.objects.filter(pk=pk).update(bound_address=ip.compressed, last_address=ip.compressed)


class Migration(migrations.Migration):
    dependencies = [("devices", "0006_device_admission")]

    operations = [migrations.RunPython(bind_to_reported_address, migrations.RunPython.noop)]
