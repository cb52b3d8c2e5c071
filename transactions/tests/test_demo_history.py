"""`make demo`'s month of history: present at both locations, adding up, loaded once."""

from datetime import UTC, datetime
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from devices.models import Command, Device, Location, Route
from inventory.choices import MovementReason
from inventory.models import Product, Slot, StockMovement
from tests.accounting import Start, check_stock, slot_figures
from transactions.choices import TransactionState
from transactions.demo import DRIVER_USERNAME, HISTORY_DAYS, ROUTE_NAME, WEAK_SLOT
from transactions.models import Transaction, TransactionEvent
from vending_site.auth.roles import DRIVER

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def bootstrap_demo() -> str:
    out = StringIO()
    call_command("bootstrap", "--demo-fleet", stdout=out)
    return out.getvalue()


def test_make_demo_loads_a_month_of_vends_at_two_locations_on_a_route(data_dir):
    output = bootstrap_demo()

    locations = list(Location.objects.order_by("name"))
    assert len(locations) == 2
    for location in locations:
        vends = Transaction.objects.filter(device__location=location)
        days = vends.annotate(day=TruncDate("created_at")).values("day").distinct().count()
        assert days >= 25, f"{location.name}: vends on {days} days"
        assert vends.filter(state=TransactionState.SUCCEEDED).exists()
        assert Device.objects.filter(location=location).count() == 2
    assert Transaction.objects.filter(state=TransactionState.FAILED).exists()
    assert not Transaction.objects.exclude(
        state__in=[TransactionState.SUCCEEDED, TransactionState.FAILED]
    ).exists()
    assert not Product.objects.filter(price__lte=0).exists()
    # Restocks every few days: in 30 days each stocked slot is visited at least 8 times.
    restocks = StockMovement.objects.filter(reason=MovementReason.RESTOCK, note__contains="route")
    per_slot = restocks.values("slot").annotate(n=Count("pk")).values_list("n", flat=True)
    assert min(per_slot) >= 4 and max(per_slot) <= HISTORY_DAYS // 3 + 2
    # The weak motor stands out.
    weak = Transaction.objects.filter(device__device_id=WEAK_SLOT[0], slot_number=WEAK_SLOT[1])
    weak_rate = weak.filter(state=TransactionState.FAILED).count() / weak.count()
    fleet_rate = Transaction.objects.filter(state=TransactionState.FAILED).count() / (
        Transaction.objects.count()
    )
    assert weak_rate > 2 * fleet_rate
    # The driver: on the route, in the Driver role, password printed and kept like the admin's.
    route = Route.objects.get(name=ROUTE_NAME)
    assert [stop.location for stop in route.stops.order_by("position")] == locations
    driver = get_user_model().objects.get(username=DRIVER_USERNAME)
    assert route.driver == driver
    assert list(driver.groups.values_list("name", flat=True)) == [DRIVER]
    assert driver.is_staff and not driver.is_superuser
    password = (data_dir / "driver-password.txt").read_text().strip()
    assert driver.check_password(password)
    assert f"Created demo driver 'driver' (Driver role) with password '{password}'" in output
    assert "Demo history: " in output and " vends (" in output


def assert_running_totals() -> None:
    """Each slot's rows, in time order, are a running total from 0 to its quantity."""
    for slot in Slot.objects.all():
        total = slot.movements.aggregate(total=Sum("delta"))["total"] or 0
        assert total == slot.quantity, slot
        running = 0
        for row in slot.movements.order_by("created_at", "pk"):
            running += row.delta
            assert row.quantity_after == running, (slot, row.pk)
            assert 0 <= running <= slot.capacity


def test_the_demo_history_adds_up_in_the_ledger(data_dir):
    bootstrap_demo()

    # From an empty ledger: every slot's quantity is the sum of its movements, and every
    # vend has its own rows (-1, and +1 when it failed).
    figures = slot_figures(
        Start(quantities={}, last_movement=0, taken_at=datetime(2000, 1, 1, tzinfo=UTC))
    )
    check_stock(figures)
    assert sum(f.reserved for f in figures) == Transaction.objects.count() > 500
    assert_running_totals()
    # Each vend's command and its three state changes.
    assert Command.objects.filter(transaction__isnull=False).count() == Transaction.objects.count()
    assert TransactionEvent.objects.count() == 3 * Transaction.objects.count()


def test_the_demo_history_is_loaded_once(data_dir):
    bootstrap_demo()
    counts = (
        Transaction.objects.count(),
        StockMovement.objects.count(),
        Location.objects.count(),
        Route.objects.count(),
        get_user_model().objects.count(),
    )
    quantities = dict(Slot.objects.values_list("pk", "quantity"))

    output = bootstrap_demo()

    assert "Demo history: already loaded." in output
    assert "Created demo driver" not in output
    assert (
        Transaction.objects.count(),
        StockMovement.objects.count(),
        Location.objects.count(),
        Route.objects.count(),
        get_user_model().objects.count(),
    ) == counts
    assert dict(Slot.objects.values_list("pk", "quantity")) == quantities


def test_history_goes_before_a_ledger_the_fleet_already_had(data_dir):
    from inventory.demo import load_demo_fleet

    load_demo_fleet()  # stocked at 8 now, before any history (an older `make demo`)

    bootstrap_demo()

    check_stock(
        slot_figures(
            Start(quantities={}, last_movement=0, taken_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
    )
    assert_running_totals()
    for slot in Slot.objects.filter(device__device_id__startswith="ESP32_02"):
        assert slot.quantity == 8
        assert slot.transactions.count() > 10


def test_a_second_load_leaves_the_route_as_staff_changed_it(data_dir):
    bootstrap_demo()
    route = Route.objects.get(name=ROUTE_NAME)
    first, second = route.stops.order_by("position")
    first.delete()
    second.position = 1
    second.save()

    bootstrap_demo()

    assert [(s.location, s.position) for s in route.stops.all()] == [(second.location, 1)]
