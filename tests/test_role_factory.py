"""``tests.factories.role_group`` makes a role's group again after a transactional test's
flush removed it, with the same permissions migration ``vending_site.0003_roles`` gives."""

import importlib

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.factories import role_group, staff_with_role
from vending_site.auth import roles


def migrate_roles() -> None:
    """Run the roles migration's function again, on the migrations' own model state (what
    ``migrate`` did when the test database was made; a flush may have emptied it since)."""
    migration = importlib.import_module("vending_site.migrations.0003_roles")
    migration.create_roles(MigrationExecutor(connection).loader.project_state().apps, None)


@pytest.mark.django_db
@pytest.mark.parametrize("role", [roles.OPERATOR, roles.DRIVER, roles.TECHNICIAN, roles.VIEWER])
def test_a_role_group_made_again_holds_what_the_migration_gave_it(role):
    migrate_roles()
    migrated = set(Group.objects.get(name=role).permissions.values_list("pk", flat=True))
    Group.objects.filter(name=role).delete()  # as a flush would

    remade = set(role_group(role).permissions.values_list("pk", flat=True))

    assert remade == migrated and remade
    assert staff_with_role(role).groups.get().name == role
