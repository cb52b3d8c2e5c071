"""Create the four staff roles (``vending_site.auth.roles``) as groups with their
permissions, and give every staff account that existed before roles the Operator role.

Permissions are normally created after all migrations ran (``post_migrate``); they are
created here first so the groups can hold them. Reversing removes the groups only."""

from django.contrib.auth.management import create_permissions
from django.contrib.contenttypes.management import create_contenttypes
from django.db import migrations

from vending_site.auth import roles


def create_roles(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_contenttypes(app_config, verbosity=0, apps=apps)
        create_permissions(app_config, verbosity=0, apps=apps)
        app_config.models_module = None
    roles.ensure_roles(apps=apps)
    User = apps.get_model("auth", "User")
    operator = apps.get_model("auth", "Group").objects.get(name=roles.OPERATOR)
    for user in User.objects.filter(is_staff=True, is_superuser=False):
        user.groups.add(operator)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(
        name__in=[roles.OPERATOR, roles.DRIVER, roles.TECHNICIAN, roles.VIEWER]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("vending_site", "0002_service_heartbeat"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("devices", "0008_locations_routes_and_permissions"),
        ("inventory", "0004_permissions"),
        ("transactions", "0003_permissions"),
        ("rest_framework_api_key", "0005_auto_20220110_1102"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
