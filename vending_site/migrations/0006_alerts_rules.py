"""Give the staff roles that exist already their alert permissions (``vending_site.auth.roles``:
every role views alerts and rules; Operator and Technician handle alerts; Operator edits the
rules). A role group made after this (``ensure_roles``) gets them from ``roles.grants()``.
Reversing takes them away again."""

from django.contrib.auth.management import create_permissions
from django.contrib.contenttypes.management import create_contenttypes
from django.db import migrations

READS = ("view_alert", "view_alertrule")
GRANTS = {
    "Operator": (*READS, "change_alert", "change_alertrule"),
    "Technician": (*READS, "change_alert"),
    "Driver": READS,
    "Viewer": READS,
}


def _permissions(apps, codenames):
    return apps.get_model("auth", "Permission").objects.filter(
        content_type__app_label="vending_site", codename__in=codenames
    )


def grant(apps, schema_editor):
    app_config = apps.get_app_config("vending_site")
    app_config.models_module = True
    create_contenttypes(app_config, verbosity=0, apps=apps)
    create_permissions(app_config, verbosity=0, apps=apps)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    for name, codenames in GRANTS.items():
        group = Group.objects.filter(name=name).first()
        if group is not None:
            group.permissions.add(*_permissions(apps, codenames))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name, codenames in GRANTS.items():
        group = Group.objects.filter(name=name).first()
        if group is not None:
            group.permissions.remove(*_permissions(apps, codenames))


class Migration(migrations.Migration):
    dependencies = [
        ("vending_site", "0005_notify_delivery"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
