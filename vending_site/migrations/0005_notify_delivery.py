"""Give the Operator role the notification permissions (``roles.OPERATOR_EXTRA``): managing
webhook, e-mail and Apprise endpoints and replaying their deliveries.

A fresh install's Operator gets them from ``roles.ensure_roles``; an existing group is left as
staff edited it there, so this adds them to it once. Reversing takes them away."""

from django.contrib.auth.management import create_permissions
from django.contrib.contenttypes.management import create_contenttypes
from django.db import migrations

from vending_site.auth import roles


def _operator_and_permissions(apps):
    app_config = apps.get_app_config("vending_site")
    app_config.models_module = True
    create_contenttypes(app_config, verbosity=0, apps=apps)
    create_permissions(app_config, verbosity=0, apps=apps)
    app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    codenames = [name.split(".", 1)[1] for name in roles.OPERATOR_EXTRA]
    permissions = Permission.objects.filter(
        content_type__app_label="vending_site", codename__in=codenames
    )
    operator = apps.get_model("auth", "Group").objects.filter(name=roles.OPERATOR).first()
    return operator, permissions


def grant(apps, schema_editor):
    operator, permissions = _operator_and_permissions(apps)
    if operator is not None:
        operator.permissions.add(*permissions)


def revoke(apps, schema_editor):
    operator, permissions = _operator_and_permissions(apps)
    if operator is not None:
        operator.permissions.remove(*permissions)


class Migration(migrations.Migration):
    dependencies = [("vending_site", "0004_alerts_and_notify")]

    operations = [migrations.RunPython(grant, revoke)]
