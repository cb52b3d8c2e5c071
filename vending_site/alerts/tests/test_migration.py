"""Roles that existed before alerts get their alert permissions from the migration."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("vending_site", "0004_alerts_and_notify")]
AFTER = [("vending_site", "0006_alerts_rules")]


def codenames(apps, group: str) -> set[str]:
    Group = apps.get_model("auth", "Group")
    return set(
        Group.objects.get(name=group)
        .permissions.filter(content_type__app_label="vending_site")
        .values_list("codename", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_existing_roles_gain_the_alert_permissions_each_should_hold():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    before = executor.loader.project_state(BEFORE).apps
    assert "change_alert" not in codenames(before, "Technician")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    after = executor.loader.project_state(AFTER).apps

    reads = {"view_alert", "view_alertrule"}
    assert codenames(after, "Operator") >= reads | {"change_alert", "change_alertrule"}
    assert codenames(after, "Technician") >= reads | {"change_alert"}
    assert "change_alertrule" not in codenames(after, "Technician")
    for role in ("Driver", "Viewer"):
        assert reads <= codenames(after, role)
        assert not {"change_alert", "change_alertrule"} & codenames(after, role)
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
