"""The pieces of `make demo`: its fleet, its customers and its serial machine's stable name."""

import os
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Sum
from django.utils import timezone

from devices.models import Device
from inventory.demo import DEMO_FLEET, load_demo_fleet
from inventory.models import Slot
from tests.scratch.children import read_until, start_command, stop
from transactions.models import Transaction

pytestmark = pytest.mark.django_db


def test_the_demo_fleet_is_stocked_through_the_ledger_and_loads_once():
    load_demo_fleet()
    load_demo_fleet()

    assert Device.objects.count() == len(DEMO_FLEET)
    for slot in Slot.objects.all():
        assert slot.product_id is not None
        assert slot.quantity == 8 == slot.movements.aggregate(total=Sum("delta"))["total"]


def test_demo_customers_buy_from_online_machines_and_restock_sold_out_ones():
    fleet = load_demo_fleet()
    online, sold_out = fleet[0], fleet[1]
    Device.objects.filter(pk__in=[online.pk, sold_out.pk]).update(last_seen=timezone.now())
    Slot.objects.filter(device=sold_out).update(quantity=0)
    out = StringIO()

    call_command("demo_traffic", "--every", "0.05", "--duration", "1", "--seed", "1", stdout=out)

    assert Transaction.objects.filter(device=online).exists()
    assert "ordered" in out.getvalue()
    assert f"{sold_out.device_id}: sold out, restocked" in out.getvalue()
    assert Slot.objects.filter(device=sold_out, quantity=10).exists()
    assert not Transaction.objects.exclude(device__in=[online, sold_out]).exists()


def test_demo_customers_do_not_claim_to_restock_a_machine_with_no_products():
    fleet = load_demo_fleet()
    bare = fleet[0]
    Device.objects.filter(pk=bare.pk).update(last_seen=timezone.now())
    Slot.objects.filter(device=bare).update(product=None, quantity=0)
    out = StringIO()

    call_command("demo_traffic", "--every", "0.05", "--duration", "0.3", "--seed", "1", stdout=out)

    assert f"{bare.device_id}: no products assigned, nothing to sell" in out.getvalue()
    assert "restocked" not in out.getvalue()
    assert not Slot.objects.filter(device=bare, quantity__gt=0).exists()


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_the_serial_simulator_keeps_a_stable_link_to_its_pty_while_it_runs(tmp_path):
    link = tmp_path / "ttyDEMO"
    process = start_command("simulate_esp32", "--serial", "--duration", "3", "--link", str(link))
    try:
        line = read_until(process, "serial device ready at")
        pty = re.search(r"(/dev/\S+)", line).group(1)
        assert os.path.realpath(link) == os.path.realpath(pty)
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert not link.exists() and not link.is_symlink()


def test_the_demo_fleet_stocks_a_machine_that_registered_itself_first(client):
    from inventory.demo import DEMO_FLEET

    device_id = DEMO_FLEET[0][0]
    client.post(
        "/esp32/register",
        {"device_id": device_id, "slots_available": 5},
        content_type="application/json",
    )

    load_demo_fleet()

    slots = Slot.objects.filter(device__device_id=device_id)
    assert [slot.quantity for slot in slots] == [8] * 5


@pytest.mark.system
@pytest.mark.django_db(transaction=True)
def test_demo_customers_stop_at_sigterm_before_their_duration_is_up():
    load_demo_fleet()
    process = start_command("demo_traffic", "--every", "0.2", "--duration", "120")
    try:
        read_until(process, "demo customers: a vend every")
    finally:
        code, output = stop(process, timeout=10)

    assert "demo customers gone" in output, output
    assert code == 0, output
