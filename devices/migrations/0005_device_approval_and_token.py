"""Device approval and per-device tokens; the vend-client group.

Devices that exist already were trusted before approval existed, so they migrate as
approved; new rows then follow ``DEVICE_APPROVAL_REQUIRED``.
"""

from django.db import migrations, models

import devices.models

VEND_CLIENT_GROUP = "vend-client"  # vending_site.auth.permissions.VEND_CLIENT_GROUP


def create_vend_client_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name=VEND_CLIENT_GROUP)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("devices", "0004_serial_port"),
    ]

    operations = [
        migrations.AddField(
            model_name="device",
            name="approved",
            field=models.BooleanField(default=True),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="device",
            name="approved",
            field=models.BooleanField(
                default=devices.models.approved_by_default,
                help_text=(
                    "With DEVICE_APPROVAL_REQUIRED, only approved WiFi devices receive commands."
                ),
            ),
        ),
        migrations.AddField(
            model_name="device",
            name="token_hash",
            field=models.CharField(
                blank=True,
                editable=False,
                help_text=(
                    "SHA-256 of the device's X-Device-Token (the token itself is never stored)."
                ),
                max_length=64,
            ),
        ),
        migrations.RunPython(create_vend_client_group, migrations.RunPython.noop),
    ]
