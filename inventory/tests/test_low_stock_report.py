"""``low_stock_report`` and the selector behind it: what to restock, in a stable order."""

import csv
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from inventory.management.commands.low_stock_report import Command
from inventory.models import Product
from inventory.selectors import low_stock_slots
from tests.factories import DeviceFactory, ProductFactory, SlotFactory

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[int, str]:
    """The command's exit status and what it printed."""
    out = StringIO()
    try:
        call_command("low_stock_report", *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


@pytest.fixture
def fleet():
    """Two machines: B has slot 2 at its threshold and slot 1 below it; A has slot 3 empty.

    B's slot 2 fills to a PAR of 8 below its capacity of 10; the others to their capacity.

    Also on them: a well-stocked slot, a low slot with no product (nothing to restock), and
    a slot just above its threshold.
    """
    a = DeviceFactory(device_id="ESP32_AAAAAAAAAAAA")
    b = DeviceFactory(device_id="ESP32_BBBBBBBBBBBB")
    cola = ProductFactory(sku="COLA", name="Cola")
    chips = ProductFactory(sku="CHIPS", name="Chips")
    SlotFactory(
        device=b, number=2, product=cola, quantity=2, capacity=10, par=8, low_stock_threshold=2
    )
    SlotFactory(device=b, number=1, product=chips, quantity=1, capacity=8, low_stock_threshold=3)
    SlotFactory(device=b, number=3, product=chips, quantity=4, capacity=8, low_stock_threshold=3)
    SlotFactory(device=a, number=3, product=cola, quantity=0, capacity=6, low_stock_threshold=1)
    SlotFactory(device=a, number=1, product=cola, quantity=9, capacity=10)
    SlotFactory(device=a, number=2, product=None, quantity=0, capacity=10)
    return a, b


def test_low_stock_slots_are_those_at_or_below_threshold_with_a_product_by_device_and_slot(
    fleet,
):
    slots = low_stock_slots()

    assert [(s.device.device_id, s.number) for s in slots] == [
        ("ESP32_AAAAAAAAAAAA", 3),
        ("ESP32_BBBBBBBBBBBB", 1),
        ("ESP32_BBBBBBBBBBBB", 2),
    ]
    assert all(slot.is_low for slot in slots)


def test_low_stock_slots_read_device_and_product_in_one_query(fleet, django_assert_num_queries):
    with django_assert_num_queries(1):
        names = [(s.device.device_id, s.product.name) for s in low_stock_slots()]
    assert len(names) == 3


def test_the_report_lists_each_low_slot_as_a_table_row_and_exits_1(fleet):
    code, output = run()

    assert code == 1
    lines = output.splitlines()
    assert lines[0].split() == [
        "DEVICE", "SLOT", "PRODUCT", "QUANTITY", "CAPACITY", "THRESHOLD", "FILL_TO", "TO_LOAD"
    ]  # fmt: skip
    assert lines[1].split() == ["ESP32_AAAAAAAAAAAA", "3", "Cola", "0", "6", "1", "6", "6"]
    assert lines[2].split() == ["ESP32_BBBBBBBBBBBB", "1", "Chips", "1", "8", "3", "8", "7"]
    assert lines[3].split() == ["ESP32_BBBBBBBBBBBB", "2", "Cola", "2", "10", "2", "8", "6"]
    assert "3 slot(s) at or below" in lines[4]


def test_csv_output_has_a_header_row_and_one_row_per_low_slot(fleet):
    Product.objects.filter(sku="COLA").update(name='Cola, "zero"')  # needs CSV quoting

    code, output = run("--format", "csv")

    assert code == 1
    rows = list(csv.reader(StringIO(output)))
    assert rows == [
        ["device", "slot", "product", "quantity", "capacity", "threshold", "fill_to", "to_load"],
        ["ESP32_AAAAAAAAAAAA", "3", 'Cola, "zero"', "0", "6", "1", "6", "6"],
        ["ESP32_BBBBBBBBBBBB", "1", "Chips", "1", "8", "3", "8", "7"],
        ["ESP32_BBBBBBBBBBBB", "2", 'Cola, "zero"', "2", "10", "2", "8", "6"],
    ]


def test_device_filter_accepts_any_spelling_of_the_id(fleet):
    code, output = run("--device", "bb:bb:bb:bb:bb:bb", "--format", "csv")

    assert code == 1
    assert [row[0] for row in csv.reader(StringIO(output))][1:] == ["ESP32_BBBBBBBBBBBB"] * 2


def test_nothing_low_prints_all_clear_and_exits_0():
    SlotFactory(quantity=5, capacity=10, low_stock_threshold=2)

    code, output = run()

    assert code == 0
    assert output.strip() == "All slots above their low-stock threshold."


def test_nothing_low_in_csv_prints_only_the_header_and_exits_0():
    SlotFactory(quantity=5, capacity=10, low_stock_threshold=2)

    code, output = run("--format", "csv")

    assert code == 0
    assert output.splitlines() == [
        "device,slot,product,quantity,capacity,threshold,fill_to,to_load"
    ]


def test_a_device_with_nothing_low_exits_0_even_when_others_are_low(fleet):
    quiet = DeviceFactory(device_id="ESP32_CCCCCCCCCCCC")
    SlotFactory(device=quiet, number=1, quantity=5)

    code, output = run("--device", quiet.device_id)

    assert code == 0
    assert "All slots above" in output


def test_an_unknown_device_is_a_command_error_exiting_2_not_1_like_low_stock():
    with pytest.raises(CommandError, match="No device ESP32_DDDDDDDDDDDD") as excinfo:
        call_command("low_stock_report", "--device", "ESP32_DDDDDDDDDDDD", stdout=StringIO())

    assert excinfo.value.returncode == 2  # what manage.py exits with


def test_a_malformed_device_id_is_a_command_error_exiting_2():
    with pytest.raises(CommandError) as excinfo:
        call_command("low_stock_report", "--device", "not-an-id", stdout=StringIO())

    assert excinfo.value.returncode == 2


def test_bad_arguments_on_the_command_line_exit_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        Command().run_from_argv(["manage.py", "low_stock_report", "--format", "xml"])

    assert excinfo.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
