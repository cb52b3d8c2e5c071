"""Accounting checks for fault tests: stock explained by vends and by the ledger, and the
vends' outcomes counted from the machines' own records.

Two independent views of a slot must agree with its final quantity:

- by the vends: ``start - reserved + returned + other movements`` (every accepted vend
  reserves a unit; one that ended ``failed``, ``expired`` or ``cancelled`` returns it;
  restocks, adjustments and "slot found empty" are the other movements);
- by the ledger: ``start + the sum of the StockMovement deltas since the start``.

And every vend has exactly its own ledger rows: one ``-1``, plus one ``+1`` if it was
refunded; a unit returned twice (or never) is named.

The outcome count compares what clients were told was accepted with what the machines
themselves say they dispensed (the WiFi simulator's witness, the serial simulator's
``vends``), never with the server's tables alone:

- *lost*: accepted, never dispensed, and neither refunded (failed/expired/cancelled) nor
  flagged ``unconfirmed`` for staff: still queued or sent, missing, or ``succeeded``
  without a dispense;
- *duplicated*: dispensed more than once for one vend;
- *unexpected*: dispensed for no accepted vend;
- *dispensed but refunded*: a free item (the unit went back although it came out).

Each must be 0. Two cases are counted apart, not as lost, because the unit stays reserved
and staff see an ``unconfirmed`` vend for the slot:

- an accepted vend flagged ``unconfirmed`` that the machine never dispensed (a worker died,
  or the machine gave up on the answer, after the command was handed out);
- *credited to another vend*: a WiFi confirmation names no command, so it settles the
  oldest delivered vend of its slot (PROTOCOL.md). When that older delivery never reached
  the machine, the older vend ends ``succeeded`` without a dispense and the vend actually
  dispensed ends ``unconfirmed``; such pairs (same device and slot) are listed here. Stock
  is right; which customer got the unit is not (``WIFI_ONE_VEND_AT_A_TIME`` narrows this).

The serial wire carries no command id, so a serial machine's dispenses are matched to the
vends for the same device and slot by count: dispenses go to vends the server kept first
(succeeded, then unconfirmed, then open); any beyond the vends for that slot are
duplicates (or unexpected when no vend asked for that slot).

The ORM helpers (:func:`take_start`, :func:`slot_figures`, :func:`accepted_vends`) run in
whichever process reaches the database; the checks themselves take plain data, so a test
can run them on a report from a child process.
"""

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime

KEPT = ("succeeded", "unconfirmed")
REFUNDED = ("failed", "expired", "cancelled")
OPEN = ("queued", "sent")


# --- stock -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Each slot's quantity at the start, and where the ledger stood then."""

    quantities: dict[int, int]  # slot pk -> quantity
    last_movement: int  # StockMovement pk; rows after it are "since the start"
    taken_at: datetime  # transactions created from here on are the run's vends


@dataclass
class SlotFigures:
    slot: str  # "ESP32_... slot 3"
    start: int
    final: int
    reserved: int = 0  # vends accepted since the start
    returned: int = 0  # of those, ended failed/expired/cancelled
    kept: int = 0  # succeeded or unconfirmed
    open: int = 0  # still queued or sent
    other: dict[str, int] = field(default_factory=dict)  # movement reason -> delta, no vend
    ledger: int = 0  # sum of every ledger delta since the start
    bad_vends: list[str] = field(default_factory=list)  # vends whose own ledger rows are wrong

    @property
    def by_vends(self) -> int:
        return self.start - self.reserved + self.returned + sum(self.other.values())

    @property
    def by_ledger(self) -> int:
        return self.start + self.ledger

    def problems(self) -> list[str]:
        found = []
        if self.by_vends != self.final:
            other = ", ".join(f"{reason} {delta:+d}" for reason, delta in self.other.items())
            found.append(
                f"{self.slot}: start {self.start} - {self.reserved} reserved "
                f"+ {self.returned} returned + other movements ({other or 'none'}) "
                f"= {self.by_vends}, but the slot holds {self.final} "
                f"({self.kept} kept, {self.open} still open)"
            )
        if self.by_ledger != self.final:
            found.append(
                f"{self.slot}: start {self.start} + ledger {self.ledger:+d} = {self.by_ledger}, "
                f"but the slot holds {self.final}"
            )
        found += [f"{self.slot}: {text}" for text in self.bad_vends]
        return found


def check_stock(figures: list["SlotFigures | dict"]) -> None:
    """Fail naming every slot whose stock its vends or its ledger do not explain."""
    slots = [SlotFigures(**f) if isinstance(f, dict) else f for f in figures]
    problems = [text for slot in slots for text in slot.problems()]
    assert not problems, "stock does not add up:\n" + "\n".join(problems)


def take_start() -> Start:
    """Every slot's quantity now; take it while no vend is in flight."""
    from django.utils import timezone

    from inventory.models import Slot, StockMovement

    last = StockMovement.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    return Start(
        quantities=dict(Slot.objects.values_list("pk", "quantity")),
        last_movement=last,
        taken_at=timezone.now(),
    )


def start_at_movement(last_movement: int) -> Start:
    """The start as the ledger stood after movement ``last_movement`` (for a database a
    child process set up): each slot's ``quantity_after`` of its last row up to it."""
    from django.db.models import Max

    from inventory.models import Slot, StockMovement

    upto = StockMovement.objects.filter(pk__lte=last_movement)
    last_rows = upto.values("slot_id").annotate(last=Max("pk")).values_list("last", flat=True)
    rows = StockMovement.objects.filter(pk__in=list(last_rows))
    after = dict(rows.values_list("slot_id", "quantity_after"))
    taken_at = (
        StockMovement.objects.filter(pk=last_movement).values_list("created_at", flat=True).first()
    )
    return Start(
        quantities={pk: after.get(pk, 0) for pk in Slot.objects.values_list("pk", flat=True)},
        last_movement=last_movement,
        taken_at=taken_at or datetime.min,
    )


def slot_figures(start: Start, *, devices: list[str] | None = None) -> list[SlotFigures]:
    """Both views of every slot (of ``devices``, if given) since ``start``."""
    from inventory.models import Slot, StockMovement
    from transactions.models import Transaction

    slots = Slot.objects.select_related("device").order_by("device__device_id", "number")
    if devices is not None:
        slots = slots.filter(device__device_id__in=devices)
    figures = {
        slot.pk: SlotFigures(
            slot=f"{slot.device.device_id} slot {slot.number}",
            start=start.quantities.get(slot.pk, 0),
            final=slot.quantity,
        )
        for slot in slots
    }
    vends = Transaction.objects.filter(created_at__gte=start.taken_at, slot_id__in=list(figures))
    states = dict(vends.values_list("pk", "state"))
    slot_of = dict(vends.values_list("pk", "slot_id"))
    for txn_id, state in states.items():
        slot = figures[slot_of[txn_id]]
        slot.reserved += 1
        slot.returned += state in REFUNDED
        slot.kept += state in KEPT
        slot.open += state in OPEN
    own_rows: dict = defaultdict(list)  # vend -> [(slot pk, delta)]
    for row in StockMovement.objects.filter(
        pk__gt=start.last_movement, slot_id__in=list(figures)
    ).values("slot_id", "delta", "reason", "transaction_id"):
        slot = figures[row["slot_id"]]
        slot.ledger += row["delta"]
        if row["transaction_id"] is None:
            slot.other[row["reason"]] = slot.other.get(row["reason"], 0) + row["delta"]
        else:
            own_rows[row["transaction_id"]].append((row["slot_id"], row["delta"]))
    for txn_id, state in states.items():
        want = [-1, 1] if state in REFUNDED else [-1]
        rows = sorted(delta for _slot, delta in own_rows.pop(txn_id, []))
        if rows != want:
            figures[slot_of[txn_id]].bad_vends.append(
                f"vend {txn_id} ({state}) has ledger rows {rows}, expected {want}"
            )
    # Rows of vends from before the start: take the start while nothing is in flight.
    for txn_id, rows in own_rows.items():
        figures[rows[0][0]].bad_vends.append(
            f"vend {txn_id} from before the start moved stock since: {[d for _s, d in rows]}"
        )
    return list(figures.values())


def slot_figures_as_dicts(start: Start, **kwargs) -> list[dict]:
    return [asdict(figure) for figure in slot_figures(start, **kwargs)]


def assert_stock_adds_up(start: Start, **kwargs) -> list[SlotFigures]:
    """:func:`slot_figures` then :func:`check_stock`, in this process."""
    figures = slot_figures(start, **kwargs)
    check_stock(figures)
    return figures


# --- outcomes from the machines' own records ---------------------------------------------


@dataclass(frozen=True)
class Vend:
    """A vend a client was told was accepted, and the state the server ended it in
    (``None``: the server has no such vend)."""

    transaction_id: str
    device_id: str
    slot: int
    state: str | None


@dataclass(frozen=True)
class Dispense:
    """One unit a machine says came out. WiFi machines know the vend it was for; serial
    ones only the slot."""

    device_id: str
    slot: int
    transaction_id: str | None = None


@dataclass
class Outcomes:
    accepted: int = 0
    dispensed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dispensed_but_refunded: list[str] = field(default_factory=list)
    unconfirmed_undelivered: list[str] = field(default_factory=list)  # flagged, not lost
    credited_to_another_vend: list[str] = field(default_factory=list)  # pairs, not lost

    def line(self) -> str:
        return (
            f"outcomes: {self.accepted} accepted, {self.dispensed} dispensed (machines' records); "
            f"lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"unexpected {len(self.unexpected)}, "
            f"dispensed but refunded {len(self.dispensed_but_refunded)}; "
            f"unconfirmed and never dispensed (flagged for staff) "
            f"{len(self.unconfirmed_undelivered)}, "
            f"confirmation credited to an older vend of the slot "
            f"{len(self.credited_to_another_vend)}"
        )

    def check(self) -> None:
        problems = [
            f"{name}: {len(items)} - {items[:5]}"
            for name, items in (
                ("lost", self.lost),
                ("duplicated", self.duplicated),
                ("unexpected", self.unexpected),
                ("dispensed but refunded", self.dispensed_but_refunded),
            )
            if items
        ]
        assert not problems, self.line() + "\n" + "\n".join(problems)


def count_outcomes(accepted: list[Vend], dispensed: list[Dispense]) -> Outcomes:
    """Match what machines dispensed with what was accepted (see the module docstring)."""
    outcomes = Outcomes(accepted=len(accepted), dispensed=len(dispensed))
    by_id = {vend.transaction_id: vend for vend in accepted}
    times: Counter[str] = Counter()
    by_slot: dict[tuple[str, int], int] = Counter()
    for unit in dispensed:
        if unit.transaction_id is None:
            by_slot[(unit.device_id, unit.slot)] += 1
        elif unit.transaction_id not in by_id:
            outcomes.unexpected.append(f"{unit.device_id} slot {unit.slot}: {unit.transaction_id}")
        else:
            vend = by_id[unit.transaction_id]
            if (vend.device_id, vend.slot) != (unit.device_id, unit.slot):
                outcomes.unexpected.append(
                    f"{unit.device_id} slot {unit.slot} dispensed vend {vend.transaction_id} "
                    f"meant for {vend.device_id} slot {vend.slot}"
                )
            times[unit.transaction_id] += 1
    # Serial: by count per device and slot, kept vends first.
    priority = {"succeeded": 0, "unconfirmed": 1, "sent": 2, "queued": 3}
    slot_vends = defaultdict(list)
    for vend in accepted:
        slot_vends[(vend.device_id, vend.slot)].append(vend)
    for where, count in by_slot.items():
        candidates = sorted(slot_vends.get(where, []), key=lambda v: priority.get(v.state, 9))
        for vend in candidates[:count]:
            times[vend.transaction_id] += 1
        extra = count - len(candidates)
        if extra > 0:
            target = outcomes.duplicated if candidates else outcomes.unexpected
            target += [f"{where[0]} slot {where[1]}: a dispense beyond its vends"] * extra
    # A WiFi confirmation names no command: it settles the oldest delivered vend of that
    # slot. When an older delivery never reached the machine, the older vend is credited
    # with the newer one's unit, which stays unconfirmed. Counted apart, by pairs.
    credited: dict[tuple[str, int], list[str]] = defaultdict(list)  # succeeded, not dispensed
    uncredited: dict[tuple[str, int], list[str]] = defaultdict(list)  # dispensed, unconfirmed
    for vend in accepted:
        n = times[vend.transaction_id]
        name = f"{vend.transaction_id} ({vend.device_id} slot {vend.slot}, {vend.state})"
        where = (vend.device_id, vend.slot)
        if n > 1:
            outcomes.duplicated += [name] * (n - 1)
        if n and vend.state in REFUNDED:
            outcomes.dispensed_but_refunded.append(name)
        elif n and vend.state == "unconfirmed":
            uncredited[where].append(name)
        elif not n and vend.state == "unconfirmed":
            outcomes.unconfirmed_undelivered.append(name)
        elif not n and vend.state == "succeeded":
            credited[where].append(name)
        elif not n and vend.state not in REFUNDED:
            outcomes.lost.append(name)
    for where, names in credited.items():
        pairs = min(len(names), len(uncredited.get(where, [])))
        outcomes.credited_to_another_vend += [
            f"{names[i]} was credited with the unit of {uncredited[where][i]}" for i in range(pairs)
        ]
        outcomes.lost += names[pairs:]
    return outcomes


def accepted_vends(transaction_ids: list[str]) -> list[Vend]:
    """The :class:`Vend` of each id a client was told was accepted, as the server ended it."""
    from transactions.models import Transaction

    rows = {
        str(row["pk"]): row
        for row in Transaction.objects.filter(pk__in=transaction_ids).values(
            "pk", "device__device_id", "slot_number", "state"
        )
    }
    vends = []
    for txn_id in map(str, transaction_ids):
        row = rows.get(txn_id)
        vends.append(
            Vend(
                transaction_id=txn_id,
                device_id=row["device__device_id"] if row else "?",
                slot=row["slot_number"] if row else 0,
                state=row["state"] if row else None,
            )
        )
    return vends


def wifi_dispenses(devices) -> list[Dispense]:
    """What WiFi simulators dispensed: every VEND they acted on (their witness)."""
    return [
        Dispense(
            device_id=entry["device_id"], slot=entry["slot"], transaction_id=entry["transaction_id"]
        )
        for device in devices
        for entry in device.commands()
        if entry["command"] == "VEND" and entry["acted"]
    ]


def serial_dispenses(firmwares) -> list[Dispense]:
    """What serial simulators dispensed: their VEND_SUCCESS vends."""
    return [
        Dispense(device_id=firmware.device_id, slot=vend["slot"])
        for firmware in firmwares
        for vend in firmware.dispensed()
    ]
