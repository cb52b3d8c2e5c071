"""``manage.py low_stock_report``: the slots to restock.

Exit status: 0 nothing is low, 1 some slot is low (after printing it), 2 an error (unknown
device, bad arguments), so ``low_stock_report || notify`` can tell "restock" from "broken".
"""

import csv
import sys

from django.core.management.base import BaseCommand, CommandError

from devices.exceptions import BadDeviceId, UnknownDevice
from devices.selectors import get_device
from inventory.selectors import low_stock_slots

COLUMNS = ("device", "slot", "product", "quantity", "capacity", "threshold", "fill_to", "to_load")
LOW_STOCK = 1
ERROR = 2


class Command(BaseCommand):
    help = (
        "List the slots whose quantity is at or below their low-stock threshold, as a table "
        "or CSV, with the level a full restock fills each to (its PAR, else its capacity) and "
        "the units to load. Exits with status 1 when any slot is listed (after printing it), "
        "0 when none is, 2 on an error (unknown device, bad arguments), so cron or a monitor "
        "can act on it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--device", metavar="ID", help="Only this device (any id spelling).")
        parser.add_argument(
            "--format", dest="output_format", choices=("table", "csv"), default="table"
        )

    def handle(self, *args, device, output_format, **options):
        target = None
        if device:
            try:
                target = get_device(device)
            except (UnknownDevice, BadDeviceId) as exc:
                raise CommandError(str(exc), returncode=ERROR) from exc
        rows = [
            (
                slot.device.device_id,
                slot.number,
                slot.product.name,
                slot.quantity,
                slot.capacity,
                slot.low_stock_threshold,
                slot.fill_to,
                max(slot.fill_to - slot.quantity, 0),
            )
            for slot in low_stock_slots(device=target)
        ]
        if output_format == "csv":
            # Header only when nothing is low, so a machine reading it needs no special case.
            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        elif rows:
            self.write_table(rows)
        else:
            self.stdout.write("All slots above their low-stock threshold.")
        if rows:
            self.stdout.flush()
            sys.exit(LOW_STOCK)

    def write_table(self, rows) -> None:
        table = [tuple(c.upper() for c in COLUMNS), *(tuple(map(str, r)) for r in rows)]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        numeric = {1, 3, 4, 5, 6, 7}
        for line in table:
            cells = [
                cell.rjust(width) if i in numeric else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            ]
            self.stdout.write("  ".join(cells).rstrip())
        self.stdout.write(f"{len(rows)} slot(s) at or below their low-stock threshold.")
