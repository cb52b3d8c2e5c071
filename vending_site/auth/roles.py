"""Staff roles: four Django groups, created by migration ``vending_site.0003_roles``.

A role is a set of Django permissions, so the admin, the REST API and the pages all ask the
same question (``user.has_perm``); a superuser holds every permission. A staff account in no
role group has no permission beyond logging in (Django's default), so a new account sees
nothing until an operator gives it a role. The migration puts every staff account that
existed before roles into Operator, so an upgraded install keeps what its staff could do.

- **Operator**: everything (the three apps, users, groups, API keys, notification
  endpoints and their deliveries).
- **Driver**: the machines of the routes they drive (``Route.driver``): pick lists, fills,
  stock; no prices, no money, no users.
- **Technician**: machines, commands, logs, serial ports, the planogram's slots; no money.
- **Viewer**: reads everything, including sales; changes nothing.

Four permissions are not a model's add/change/delete/view:

- ``transactions.view_sales``: sales reports, revenue and the price a vend was charged;
- ``inventory.change_price``: products' prices and slots' price overrides;
- ``inventory.restock_slot``: recording the units loaded into a slot;
- ``devices.operate_device``: vending and sending commands to a machine.

Alerts (``vending_site.alerts``): every role views them and their rules; Operator and
Technician acknowledge and resolve them (``vending_site.change_alert``); only an Operator
edits the rules (``vending_site.change_alertrule``).

This module names permissions as strings and imports no app (the infrastructure layer).
"""

from django.apps import apps as global_apps
from django.db.models import Q
from rest_framework.permissions import BasePermission

from vending_site.auth.permissions import is_api_key, lacks

OPERATOR = "Operator"
DRIVER = "Driver"
TECHNICIAN = "Technician"
VIEWER = "Viewer"

# The apps whose every permission an Operator holds, beside the ones listed in ROLES.
OPERATOR_APPS = ("devices", "inventory", "transactions", "auth", "rest_framework_api_key")

ALERT_READS = ("vending_site.view_alert", "vending_site.view_alertrule")
ALERT_HANDLING = ("vending_site.change_alert",)

ROLES: dict[str, tuple[str, ...]] = {
    # every permission of OPERATOR_APPS, and these
    OPERATOR: (*ALERT_READS, *ALERT_HANDLING, "vending_site.change_alertrule"),
    DRIVER: (
        *ALERT_READS,
        "devices.view_device",
        "devices.view_location",
        "devices.view_route",
        "devices.view_routestop",
        "inventory.view_product",
        "inventory.view_slot",
        "inventory.view_stockmovement",
        "inventory.restock_slot",
    ),
    TECHNICIAN: (
        *ALERT_READS,
        *ALERT_HANDLING,
        "devices.view_device",
        "devices.change_device",
        "devices.operate_device",
        "devices.view_command",
        "devices.add_command",
        "devices.view_communicationlog",
        "devices.view_serialport",
        "devices.change_serialport",
        "devices.view_location",
        "devices.view_route",
        "devices.view_routestop",
        "inventory.view_product",
        "inventory.view_slot",
        "inventory.change_slot",
        "inventory.view_stockmovement",
    ),
    VIEWER: (),  # every view_* permission of the three apps, and transactions.view_sales
}
VIEWER_APPS = ("devices", "inventory", "transactions")
# Webhooks, e-mail and Apprise endpoints and their deliveries (vending_site.notify): an
# Operator manages them; the other roles neither see nor change them (a webhook's URL and
# deliveries are an integrator's business).
OPERATOR_EXTRA = (
    "vending_site.view_endpoint",
    "vending_site.add_endpoint",
    "vending_site.change_endpoint",
    "vending_site.delete_endpoint",
    "vending_site.view_message",
    "vending_site.view_delivery",
    "vending_site.change_delivery",
    "vending_site.view_deliveryattempt",
)
VIEWER_EXTRA = ("transactions.view_sales", *ALERT_READS)


def _named(names) -> Q:
    query = Q(pk__in=[])
    for name in names:
        app_label, codename = name.split(".", 1)
        query |= Q(content_type__app_label=app_label, codename=codename)
    return query


def grants() -> dict[str, Q]:
    """Each role's permissions, as a filter on ``auth.Permission``."""
    return {
        OPERATOR: Q(content_type__app_label__in=OPERATOR_APPS)
        | _named(ROLES[OPERATOR])
        | _named(OPERATOR_EXTRA),
        DRIVER: _named(ROLES[DRIVER]),
        TECHNICIAN: _named(ROLES[TECHNICIAN]),
        VIEWER: Q(content_type__app_label__in=VIEWER_APPS, codename__startswith="view_")
        | _named(VIEWER_EXTRA),
    }


def ensure_roles(*, apps=global_apps, **_signal) -> None:
    """Create each of the four role groups that is missing, with its permissions.

    Run by migration ``vending_site.0003_roles`` and after every ``migrate`` or ``flush``
    (``post_migrate`` of this app, the last installed, so every permission exists by then):
    an operator who deleted a role gets it back as shipped. A group that exists is left as
    staff edited it. One query when all four exist."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    if Group.objects.filter(name__in=list(ROLES)).count() == len(ROLES):
        return
    for name, permissions in grants().items():
        group, created = Group.objects.get_or_create(name=name)
        if created:
            group.permissions.add(*Permission.objects.filter(permissions))


def is_route_bound(user) -> bool:
    """Whether ``user`` sees only the machines of the routes they drive: a Driver who holds
    no wider role (and is no superuser)."""
    if not (user and user.is_authenticated) or user.is_superuser:
        return False
    names = getattr(user, "_role_names", None)
    if names is None:
        names = set(user.groups.values_list("name", flat=True))
        user._role_names = names
    return DRIVER in names and not names & {OPERATOR, TECHNICIAN, VIEWER}


# Who sees prices and money amounts (a product's price, a slot's override, a vend's price):
# readers of sales, and those who set prices. A Driver and a Technician hold neither.
PRICE_READERS = ("transactions.view_sales", "inventory.change_price")


def sees_prices(user) -> bool:
    return bool(user and user.is_authenticated and any(map(user.has_perm, PRICE_READERS)))


def requires(*perms: str) -> type[BasePermission]:
    """A DRF permission class: a staff account (never an API key) holding every one of
    ``perms``. Its 403 names what is missing: ``permission_denied`` for staff whose role
    lacks it, ``staff_only`` for anyone else."""

    class HasPerms(BasePermission):
        message = lacks(*perms)
        code = "permission_denied"

        def has_permission(self, request, view) -> bool:
            user = request.user
            if not (user and user.is_authenticated and user.is_staff) or is_api_key(request):
                # A vend client (user or key) is no staff account, whatever it holds.
                self.message = f"Only staff holding {', '.join(perms)} may do this."
                self.code = "staff_only"
                return False
            return user.has_perms(perms)

    HasPerms.__name__ = f"Requires({', '.join(perms)})"
    return HasPerms
