"""The four staff roles: created by migration with their permissions, and a Driver's view of
the fleet limited to the routes they drive."""

import pytest
from django.contrib.auth.models import Group
from django.test import RequestFactory
from rest_framework.request import Request

from devices.models import Location, Route, RouteStop
from devices.selectors import machines_visible_to, routes_visible_to
from tests.factories import DeviceFactory, UserFactory, role_group, staff_with_role
from tests.test_role_factory import migrate_roles
from vending_site.auth import roles

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "role, allowed, refused",
    [
        (
            roles.OPERATOR,
            ["transactions.view_sales", "inventory.change_price", "auth.add_user"],
            [],
        ),
        (
            roles.DRIVER,
            ["inventory.restock_slot", "inventory.view_slot", "devices.view_route"],
            [
                "transactions.view_sales",
                "inventory.change_price",
                "auth.view_user",
                "devices.operate_device",
                "transactions.view_transaction",
            ],
        ),
        (
            roles.TECHNICIAN,
            ["devices.operate_device", "devices.view_communicationlog", "devices.change_device"],
            [
                "transactions.view_sales",
                "transactions.view_transaction",
                "inventory.change_price",
                "auth.view_user",
            ],
        ),
        (
            roles.VIEWER,
            ["transactions.view_sales", "transactions.view_transaction", "devices.view_device"],
            [
                "devices.change_device",
                "inventory.restock_slot",
                "inventory.change_price",
                "devices.operate_device",
                "auth.view_user",
            ],
        ),
    ],
)
def test_each_role_holds_what_it_needs_and_nothing_of_what_it_must_not(role, allowed, refused):
    user = staff_with_role(role)

    assert [perm for perm in allowed if not user.has_perm(perm)] == []
    assert [perm for perm in refused if user.has_perm(perm)] == []


def test_the_four_roles_exist_after_migrating():
    if not Group.objects.exists():
        # A transactional test that ran before on this worker flushed the migration's
        # groups: apply its function again, as migrate did.
        migrate_roles()
    assert set(Group.objects.values_list("name", flat=True)) >= {
        roles.OPERATOR,
        roles.DRIVER,
        roles.TECHNICIAN,
        roles.VIEWER,
    }


def test_a_driver_sees_only_the_machines_on_the_routes_they_drive():
    driver = staff_with_role(roles.DRIVER)
    other = staff_with_role(roles.DRIVER)
    theirs, elsewhere = Location.objects.create(name="A"), Location.objects.create(name="B")
    mine = Route.objects.create(name="Mine", driver=driver)
    RouteStop.objects.create(route=mine, location=theirs, position=1)
    RouteStop.objects.create(
        route=Route.objects.create(name="Theirs", driver=other), location=elsewhere, position=1
    )
    on_route = DeviceFactory(location=theirs)
    DeviceFactory(location=elsewhere)
    DeviceFactory()

    assert list(machines_visible_to(driver)) == [on_route]
    assert list(routes_visible_to(driver)) == [mine]
    assert machines_visible_to(staff_with_role(roles.VIEWER)).count() == 3


def test_a_driver_who_also_holds_a_wider_role_sees_the_whole_fleet():
    driver = staff_with_role(roles.DRIVER)
    driver.groups.add(role_group(roles.TECHNICIAN))
    DeviceFactory()

    assert machines_visible_to(driver).count() == 1


def test_requires_refuses_a_person_without_the_permission_and_names_it():
    check = roles.requires("transactions.view_sales")()
    request = Request(RequestFactory().get("/"))

    request.user = staff_with_role(roles.DRIVER)
    assert not check.has_permission(request, None)
    assert "transactions.view_sales" in check.message

    request.user = staff_with_role(roles.VIEWER)
    assert check.has_permission(request, None)

    request.user = UserFactory()  # not staff, whatever groups it has
    assert not check.has_permission(request, None)
