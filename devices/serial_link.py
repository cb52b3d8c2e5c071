"""One USB-serial link: a :class:`SerialLink` (one thread) per port, run by
``devices.serial_bridge.Bridge`` (``manage.py run_serial_bridge``), woken by a
:class:`CommandWaker` when a command is queued.

A link opens the port, learns who is on the other end (boot banner, then ``IDENTIFY``),
registers the device, and then loops: read lines and turn them into service calls; when
nothing is in flight, claim the device's next queued command and write it. It owns no rules:
registration and presence are ``devices.services``, delivery and settlement
``transactions.delivery`` and ``transactions.confirmation``. What it guarantees:

- one command in flight per device; a command is written at most once, ever;
- a vend with no result line within ``reply_timeout`` is ``unconfirmed`` (never a success,
  never re-sent), and so is one in flight when the cable is pulled or the device reboots;
- every line in and out is in the communication log;
- a database outage does not lose a result: writes wait in a queue until it is back.
"""

import logging
import re
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import serial
import serial.tools.list_ports
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)

from transactions import commands, confirmation, delivery
from vending_site.observability import logging as vlog

from . import services
from .choices import CommandKind, Direction, LogLevel, Protocol, Transport
from .models import Device
from .protocol import (
    SERIAL_BAUD,
    SLOT_COUNT_DIGITS,
    InvalidDeviceId,
    ParsedLine,
    SerialLine,
    ascii_int,
    decode_serial_line,
    normalize_device_id,
    parse_serial_line,
    serial_command,
)
from .selectors import pending_commands

logger = logging.getLogger(__name__)


IDENTIFY_ATTEMPTS = 3


@dataclass(frozen=True)
class LinkConfig:
    baud: int = SERIAL_BAUD
    reply_timeout: float = 3.0  # SERIAL_REPLY_TIMEOUT
    poll_interval: float = 0.05  # how often to look for queued commands when idle
    ping_interval: float = 3.0  # PING a quiet device this often, keeping it online
    banner_wait: float = 1.2  # opening the port resets an ESP32; its banner follows
    identify_timeout: float = 2.0
    reconnect_max: float = 30.0


@dataclass
class InFlight:
    command_id: int
    kind: str
    slot: int | None
    deadline: float
    written_at: float


@dataclass
class _Introduction:
    """What a board said about itself while the link was set up."""

    identified: str | None = None  # the id in its IDENTIFY answer
    fields: dict[str, ParsedLine] = field(default_factory=dict)  # banner fields, by name


def _shorten(value: str, keep: int = 24) -> str:
    """``value`` quoted for a log line, cut to ``keep`` characters (a banner may be huge)."""
    return repr(value[:keep]) + (f" (+{len(value) - keep} characters)" if len(value) > keep else "")


def is_device_id(text: str) -> bool:
    try:
        normalize_device_id(text)
    except InvalidDeviceId:
        return False
    return True


def port_device_id(path: str) -> str:
    """A device id for a port whose device never said its own."""
    name = re.sub(r"[^A-Z0-9]+", "_", Path(path).name.upper()).strip("_") or "PORT"
    return f"ESP32_SERIAL_{name}"[:64]


class SerialLink:
    def __init__(
        self,
        path: str,
        config: LinkConfig,
        stop: threading.Event,
        say: Callable[[str], None] = print,
        opener: Callable[..., serial.SerialBase] = serial.serial_for_url,
        waker: "CommandWaker | None" = None,
        explicit: bool = True,
    ) -> None:
        self.path = path
        self.explicit = explicit
        self.waker = waker
        self.wake = threading.Event()
        self.config = config
        self.stop = stop
        self.say = say
        self.opener = opener
        self.device: Device | None = None
        self.in_flight: InFlight | None = None
        # After a vend timed out: that vend (its result may still come) and when the PING that
        # brings the link back in step was sent (None: in step).
        self.late: InFlight | None = None
        self.resync_sent: float | None = None
        self.connected = threading.Event()
        self._buffer = b""
        self._writes: deque[Callable[[], None]] = deque()
        self._last_traffic = 0.0
        self._noted: set[str] = set()

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        """Keep the link up until ``stop``: reconnect with backoff after any failure."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._session()
                backoff = 0.5
            # pyserial's flush() is tcdrain(), whose error is termios.error, not an OSError:
            # a cable pulled while a line drains is a lost link too, not a bug.
            except (serial.SerialException, OSError, termios.error) as exc:
                if self.connected.is_set():
                    self._say(f"{self.path}: link lost ({exc})")
                else:
                    logger.debug("%s: cannot open (%s)", self.path, exc)
            except Exception:  # a bug must not silently end the link for good
                logger.exception("%s: unexpected error; reconnecting", self.path)
                self._say(f"{self.path}: unexpected error; reconnecting")
            finally:
                self._link_down()
            if not self.stop.is_set():
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max)
        self._flush_writes(final=True)
        connection.close()

    def _session(self) -> None:
        # Exclusive: a second bridge on the same port would read some of the results.
        port = self.opener(self.path, baudrate=self.config.baud, timeout=0, exclusive=True)
        try:
            self.connected.set()
            self._buffer = b""
            self._noted.clear()
            self.late, self.resync_sent = None, None
            self.device = self._handshake(port)
            # This link's own thread (its own contextvars): every line it logs names the device.
            vlog.bind(device_id=self.device.device_id, serial_port=self.path)
            if self.waker is not None:
                self.waker.register(self.device.pk, self.wake)
            self._say(f"{self.path}: connected to {self.device.device_id}")
            while not self.stop.is_set():
                self._serve_once(port)
            self._finish_in_flight(port)
        finally:
            port.close()

    def _link_down(self) -> None:
        vlog.unbind("device_id")
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self.in_flight is not None:
            self._abandon("the serial link was lost mid-vend")
        if was_connected and self.device is not None:
            device = self.device
            self._write(lambda: services.mark_disconnected(device))
        self._flush_writes()

    # --- the conversation -----------------------------------------------------------------

    def _handshake(self, port: serial.SerialBase) -> Device:
        """Learn who is on the port: the id comes only from an answer to ``IDENTIFY``
        (``DEVICE_RESPONSE:`` then ``DEVICE_ID:``), never from the boot banner, whose id may
        be the same on every board. A board still booting misses the first IDENTIFY, so it is
        asked up to three times. A port given explicitly whose device never answers gets an
        id from its path; a port found by its USB id is not linked at all (it is some other
        USB-serial gadget).

        Nothing the board says can make this raise: an id that is not a device id is ignored
        like a missing one, and a slot count that is not 1-3 ASCII digits leaves the default
        (each noted once in the communication log), so a board with a corrupt banner still
        links instead of being reopened every few seconds."""
        heard = _Introduction()
        self._collect(port, self.config.banner_wait, heard, identify=False)
        for _attempt in range(IDENTIFY_ATTEMPTS):
            self._send_line(port, serial_command("IDENTIFY"), device=None)
            if self._collect(port, self.config.identify_timeout, heard, identify=True):
                break
        raw_id = heard.identified
        if raw_id is None:
            if not self.explicit:
                raise serial.SerialException("no ESP32 vending firmware answered IDENTIFY")
            raw_id = port_device_id(self.path)
        slots = heard.fields.get("SLOTS_AVAILABLE")
        if slots is not None and slots.number is None:
            self._note_once(
                f"SLOTS_AVAILABLE value {_shorten(slots.value)} is not a slot count "
                f"(1-{SLOT_COUNT_DIGITS} ASCII digits); the default slot count is kept"
            )
        firmware = heard.fields.get("FIRMWARE_VERSION")
        device, _created = self._db(
            lambda: services.register_device(
                raw_id=raw_id,
                transport=Transport.SERIAL,
                protocol=Protocol.SERIAL,
                serial_port=self.path,
                firmware_version=firmware.value if firmware else "",
                slot_count=slots.number if slots else None,
                reported_status="online",
            )
        )
        return device

    def _collect(self, port, seconds: float, heard: "_Introduction", identify: bool) -> bool:
        """Read banner or IDENTIFY lines for up to ``seconds``; True once identified."""
        answering = False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            for text in self._read_lines(port, 0.05):
                self._log_in(text)
                parsed = parse_serial_line(text)
                if parsed.kind is SerialLine.DEVICE_RESPONSE:
                    answering = identify
                elif parsed.kind is SerialLine.DEVICE_ID and answering:
                    if is_device_id(parsed.value):
                        heard.identified = parsed.value
                    else:
                        self._note_once(
                            f"IDENTIFY answered {_shorten(parsed.value)}, which is not a "
                            "device id; ignored"
                        )
                elif parsed.kind is SerialLine.BANNER_FIELD:
                    heard.fields[parsed.field] = parsed
                elif parsed.kind is SerialLine.STATUS and heard.identified is not None:
                    return True  # STATUS:READY closes the IDENTIFY answer
            if heard.identified is not None and "SLOTS_AVAILABLE" in heard.fields:
                return True
        return heard.identified is not None

    def _note_once(self, text: str) -> None:
        """A warning about what the board said, in the log and the communication log, once
        per link session however often the board repeats it."""
        if text in self._noted:
            return
        self._noted.add(text)
        logger.warning("%s: %s", self.path, text)
        self._log_note(text, LogLevel.WARNING)

    def _serve_once(self, port: serial.SerialBase) -> None:
        for text in self._read_lines(port, self.config.poll_interval):
            self._on_line(text)
        now = time.monotonic()
        if self.in_flight is not None:
            if now >= self.in_flight.deadline:
                self._abandon(f"no result within {self.config.reply_timeout:g} s", late=True)
        elif self.resync_sent is not None:
            # Out of step after an abandoned vend: the firmware answers one command after
            # another, so once it answers this PING, no late result can follow.
            if now - self.resync_sent >= self.config.reply_timeout:
                self._send_line(port, serial_command("PING"), device=self.device)
                self.resync_sent = now
        else:
            self._deliver_next(port)
            if self.in_flight is None and now - self._last_traffic >= self.config.ping_interval:
                self._send_line(port, serial_command("PING"), device=self.device)
        self._flush_writes()

    def _deliver_next(self, port: serial.SerialBase) -> None:
        if self._writes:
            return  # the database is behind; do not start new work until it has caught up
        self.wake.clear()
        device = self.device
        try:
            if not pending_commands(device).exists():
                return
            command = delivery.claim_next_command(device=device)
        except DatabaseError as exc:
            self._database_trouble(exc)
            return
        if command is None:
            return
        line = serial_command(command.kind, command.slot)
        if command.kind == CommandKind.VEND:
            now = time.monotonic()
            self.in_flight = InFlight(
                command_id=command.pk,
                kind=command.kind,
                slot=command.slot,
                deadline=now + self.config.reply_timeout,
                written_at=now,
            )
        self._send_line(port, line, device=device)

    def _on_line(self, text: str) -> None:
        self._log_in(text)
        device = self.device
        self._write(lambda: services.mark_seen(device))
        parsed = parse_serial_line(text)
        flight = self.in_flight
        if parsed.kind is SerialLine.DEVICE_ID:
            self.resync_sent, self.late = None, None  # rebooted: nothing late will come
            if flight is not None:
                self._abandon("the device rebooted mid-vend")
            return
        if flight is None:
            if parsed.kind is SerialLine.STATUS:
                self.resync_sent, self.late = None, None  # back in step
            elif self.late is not None and self._result_for(parsed, self.late):
                self._settle_by(parsed, self.late, late=True)
                self.late = None
            elif parsed.kind in (SerialLine.VEND_SUCCESS, SerialLine.VEND_FAILED):
                self._log_note(f"result for no vend in flight: {text}", LogLevel.WARNING)
            return
        if self._result_for(parsed, flight):
            self._settle_by(parsed, flight)
        elif parsed.kind is SerialLine.ERROR:
            # Not a vend result (e.g. an unknown command); the vend's own answer may follow.
            self._log_note(f"error line while a vend is in flight: {text}", LogLevel.WARNING)

    @staticmethod
    def _result_for(parsed, flight: InFlight) -> bool:
        """Whether the line is the result of ``flight`` (same slot, where the line says one)."""
        if parsed.kind in (SerialLine.VEND_SUCCESS, SerialLine.VEND_FAILED):
            return parsed.slot == flight.slot
        if parsed.kind is SerialLine.SLOT_EMPTY:
            return parsed.slot is None or parsed.slot == flight.slot
        return parsed.kind is SerialLine.INVALID_SLOT

    def _settle_by(self, parsed, flight: InFlight, late: bool = False) -> None:
        device = self.device
        if parsed.kind is SerialLine.VEND_SUCCESS:
            self._settle(flight, success=True, message="VEND_SUCCESS", late=late)
        elif parsed.kind is SerialLine.VEND_FAILED:
            self._settle(
                flight, success=False, message="the machine reported VEND_FAILED", late=late
            )
        elif parsed.kind is SerialLine.SLOT_EMPTY:
            self._settle(
                flight, success=False, message="the machine reported the slot empty", late=late
            )
            slot = flight.slot
            self._write(lambda: services.report_slot_empty(device=device, slot_number=slot))
        else:
            self._settle(
                flight, success=False, message="the machine refused the slot number", late=late
            )

    def _settle(self, flight: InFlight, *, success: bool, message: str, late: bool = False) -> None:
        # Record first: nothing after this line may lose the result.
        note = f"{message} (after the vend was flagged unconfirmed)" if late else message
        self._write(
            lambda: confirmation.settle_vend(
                command_id=flight.command_id, success=success, message=note
            )
        )
        if not late:
            self.in_flight = None
        elapsed = time.monotonic() - flight.written_at
        self._say(
            f"{self.device.device_id}: vend slot {flight.slot} "
            f"{'succeeded' if success else 'failed'} in {elapsed * 1000:.0f} ms"
            + (" (late)" if late else "")
        )

    def _abandon(self, reason: str, late: bool = False) -> None:
        """Flag the vend in flight ``unconfirmed``. With ``late``, the link is still up and the
        machine may yet answer: stop delivering until a PING answer shows it is back in step,
        and settle the vend by a result that arrives meanwhile."""
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return
        self._write(
            lambda: confirmation.flag_unconfirmed(command_id=flight.command_id, reason=reason)
        )
        self._say(f"{self.path}: vend slot {flight.slot} unconfirmed: {reason}")
        if late:
            self.late = flight
            self.resync_sent = 0.0  # send a PING at the next turn

    def _say(self, text: str) -> None:
        """Tell the operator; a closed or full stdout must never cost a vend."""
        try:
            self.say(text)
        except (OSError, ValueError):  # a closed pipe or file
            logger.info("%s", text)

    def _finish_in_flight(self, port: serial.SerialBase) -> None:
        """On shutdown, wait (bounded) for the result of the vend in flight."""
        while self.in_flight is not None and time.monotonic() < self.in_flight.deadline:
            for text in self._read_lines(port, 0.05):
                self._on_line(text)
        if self.in_flight is not None:
            self._abandon("the bridge stopped before the result arrived")

    # --- bytes ----------------------------------------------------------------------------

    def _read_lines(self, port: serial.SerialBase, wait: float) -> list[str]:
        deadline = time.monotonic() + wait
        while True:
            chunk = port.read(port.in_waiting or 1)
            if chunk:
                self._buffer += chunk
                self._last_traffic = time.monotonic()
            woken = self.wake.is_set() and self.in_flight is None and self.resync_sent is None
            if b"\n" in self._buffer or time.monotonic() >= deadline or woken:
                break
            time.sleep(0.002)
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > 4096:  # a device that never ends its line
            lines.append(self._buffer)
            self._buffer = b""
        return [text for raw in lines if (text := decode_serial_line(raw))]

    def _send_line(self, port: serial.SerialBase, data: bytes, device: Device | None) -> None:
        port.write(data)
        port.flush()
        self._last_traffic = time.monotonic()
        self._log(data.decode().strip(), Direction.OUT, device=device)

    def _log_in(self, text: str) -> None:
        self._log(text, Direction.IN)

    def _log_note(self, text: str, level: LogLevel) -> None:
        self._log(text, Direction.IN, level=level)

    def _log(
        self,
        text: str,
        direction: Direction,
        level: LogLevel = LogLevel.INFO,
        device: Device | None = None,
    ) -> None:
        """Queue one communication-log row (written in order with the link's other writes)."""
        device = device or self.device
        self._write(
            lambda: services.log_exchange(
                direction=direction,
                transport=Transport.SERIAL,
                device=device,
                device_key=device.device_id if device else "",
                endpoint=self.path,
                message=text,
                level=level,
            )
        )

    # --- the database -----------------------------------------------------------------

    def _write(self, action: Callable[[], None]) -> None:
        self._writes.append(action)

    def _flush_writes(self, final: bool = False) -> None:
        """Run queued writes in order. When the database cannot be reached, keep them for the
        next try; a write the database refuses for good (its row is gone) is logged and
        dropped, so it cannot block the ones behind it."""
        attempts = 20 if final else 1
        for _ in range(attempts):
            try:
                while self._writes:
                    try:
                        self._writes[0]()
                    except (OperationalError, InterfaceError):
                        raise
                    except DatabaseError:
                        logger.exception("%s: a write the database refuses was dropped", self.path)
                    self._writes.popleft()
                return
            except DatabaseError as exc:
                self._database_trouble(exc)
                if final:
                    time.sleep(0.5)

    def _db(self, action: Callable):
        """Run one read/write now, retrying through a database outage until ``stop``."""
        while True:
            try:
                return action()
            except DatabaseError as exc:
                self._database_trouble(exc)
                if self.stop.wait(1.0):
                    raise

    def _database_trouble(self, exc: Exception) -> None:
        logger.warning("%s: database unavailable (%s); will retry", self.path, exc)
        try:
            connection.close()
        except DatabaseError:
            pass
        close_old_connections()


class CommandWaker:
    """Listens for ``NOTIFY vending_commands`` on PostgreSQL and wakes the link of the device
    named in each notification. On other databases it does nothing and links fall back to
    looking every ``poll_interval``."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.listening = threading.Event()
        self.enabled = connection.vendor == "postgresql"

    def register(self, device_pk: int, event: threading.Event) -> None:
        with self._lock:
            self._events[device_pk] = event

    def start(self) -> None:
        if self.enabled:
            threading.Thread(target=self._run, name="command-waker", daemon=True).start()

    def _run(self) -> None:
        import select

        import psycopg2

        backoff = 0.5
        while not self.stop.is_set():
            listener = None
            try:
                listener = psycopg2.connect(**connection.get_connection_params())
                listener.set_session(autocommit=True)
                with listener.cursor() as cursor:
                    cursor.execute(f"LISTEN {commands.COMMANDS_CHANNEL}")
                self.listening.set()
                backoff = 0.5
                while not self.stop.is_set():
                    if select.select([listener], [], [], 0.5)[0]:
                        listener.poll()
                        while listener.notifies:
                            self._wake(listener.notifies.pop(0).payload)
            except (psycopg2.Error, OSError) as exc:
                logger.warning("command waker: %s; the 50 ms look goes on meanwhile", exc)
            finally:
                self.listening.clear()
                if listener is not None:
                    listener.close()
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _wake(self, payload: str) -> None:
        with self._lock:
            # Our own NOTIFY sends a device's primary key (a bigint: at most 19 digits).
            device_pk = ascii_int(payload, 19)
            event = self._events.get(device_pk) if device_pk is not None else None
        if event is not None:
            event.set()
