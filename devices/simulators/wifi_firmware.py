"""A virtual WiFi ESP32 speaking HTTP like the deployed firmware v2.1 (PROTOCOL.md §1).

It finds the server (a given URL, or UDP discovery then the ``/status`` probe), registers
once, and polls for commands; a ``VEND`` runs the "motor" and is confirmed with the MAC
spelling of its id and a boot-relative timestamp, exactly as the firmware does. With
``documented=True`` it speaks the variant of the original technical guide (§2) instead.

Only the standard library is used, and nothing is sent anywhere but loopback unless the
caller sets ``loopback_only=False``; discovery is a unicast datagram to a given address
(the socket never has ``SO_BROADCAST``, so the kernel refuses a broadcast address).

Each device keeps a *witness log*: every command it received (with the server's
``command_id`` when present) and every confirmation it sent. Load tests compare these
logs with the server's records to find vends lost or delivered twice.
"""

import http.client
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "http://127.0.0.1:5000"
DEFAULT_DISCOVERY = ("127.0.0.1", 12346)
FIRMWARE_HTTP_PORT = 5000  # fixed in the firmware
MAX_BODY = 16_384  # the firmware's buffer is small; a longer answer is cut
SUCCESS_MESSAGE = "Item dispensed successfully"
FAILURE_MESSAGE = "Item not dispensed"
PROBE_WORDS = ("vending", "flask", "status")
V2_MAX_SLOT = 5

# What each dialect sends and expects (PROTOCOL.md §1 and §2).
V2_DISCOVERY = (b"ESP32_DISCOVERY_REQUEST", "FLASK_SERVER:")
DOCUMENTED_DISCOVERY = (b"DISCOVER_FLASK_SERVER", "FLASK_SERVER_IP:")


class ServerNotAllowed(ValueError):
    """An address outside loopback while the simulator is confined to loopback."""


def mac_for(index: int, seed: int = 0) -> str:
    """A locally administered unicast MAC: ``02:00:00:00:00:01`` for index 1, seed 0.

    The seed (0..65535) takes bytes 2-3 and the index (0..16777215) bytes 4-6, so fleets
    built with different seeds never share an address.
    """
    if not 0 <= index <= 0xFFFFFF:
        raise ValueError(f"index {index} is outside 0..16777215")
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"seed {seed} is outside 0..65535")
    value = (0x02 << 40) | (seed << 24) | index
    return ":".join(f"{(value >> shift) & 0xFF:02X}" for shift in range(40, -8, -8))


def device_id_for(mac: str) -> str:
    """The id the firmware registers and polls with: ``ESP32_`` + the MAC without colons."""
    return "ESP32_" + mac.replace(":", "").upper()


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: we do not resolve it to find out


@dataclass
class WifiFirmware:
    """One WiFi machine. ``start()`` runs it in a thread; ``run()`` in the caller's."""

    index: int = 1
    seed: int = 0
    server_url: str | None = None  # None: find it by UDP discovery
    discovery: tuple[str, int] = DEFAULT_DISCOVERY
    http_port: int = FIRMWARE_HTTP_PORT  # where a discovered server is probed and used
    poll_interval: float = 2.0  # from the end of one poll to the start of the next
    vend_seconds: float = 1.3  # the motor and the sensor
    after_confirm: float = 2.0  # the pause after a confirmation, before polling again
    http_timeout: float = 3.0
    probe_timeout: float = 0.8
    discovery_wait: float = 0.5
    find_attempts: int = 5  # discovery rounds before the device gives up
    retry_interval: float = 1.0  # between discovery rounds
    slots: int = 5
    documented: bool = False  # speak PROTOCOL.md §2 instead of firmware v2.1
    failure_rate: float = 0.0  # documented variant only: v2.1 always reports success
    confirms: bool = True  # fault injection: False runs the motor but never POSTs confirm
    firmware_version: str = "1.0.0"  # sent by the documented variant
    ip_address: str = "127.0.0.1"  # what it reports as its own address
    max_polls: int | None = None  # stop after this many polls (None: until stopped)
    # Other servers to try when the one in use refuses the connection (nothing was sent, so
    # trying elsewhere is safe, as a load balancer does); the working one is kept.
    failover_urls: tuple[str, ...] = ()
    loopback_only: bool = True
    on_record: Callable[[dict], None] | None = field(default=None, repr=False)
    say: Callable[[str], None] | None = field(default=None, repr=False)  # progress, for humans
    witness: list[dict] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.mac = mac_for(self.index, self.seed)
        self.device_id = device_id_for(self.mac)
        self._random = random.Random(f"{self.seed}:{self.index}")
        if self.server_url is not None:
            self._check_url(self.server_url)
        for url in self.failover_urls:
            self._check_url(url)
        self._check_host(self.discovery[0])
        self.base_url: str | None = None  # the server in use, once found
        self.registered = False
        self.gave_up = False  # discovery failed every attempt
        self.polls = 0
        self.errors = 0
        self.last_error = ""
        self.thread: threading.Thread | None = None
        self._boot = time.monotonic()
        self._stop = threading.Event()
        self._deadline: float | None = None

    # --- identity on the wire -------------------------------------------------------------

    @property
    def poll_id(self) -> str:
        """How the device names itself when it registers and polls."""
        return self.mac if self.documented else self.device_id

    def millis(self) -> int:
        """Milliseconds since boot, the firmware's ``millis()``."""
        return int((time.monotonic() - self._boot) * 1000)

    # --- running ----------------------------------------------------------------------------

    def start(self, stop: threading.Event | None = None, duration: float | None = None):
        """Run in a daemon thread; returns the event that stops it."""
        stop = stop or threading.Event()
        self.thread = threading.Thread(
            target=self.run, args=(stop, duration), daemon=True, name=f"wifi-sim {self.mac}"
        )
        self.thread.start()
        return stop

    def run(self, stop_event: threading.Event, duration: float | None = None) -> None:
        """Boot, find the server, register once and poll until ``stop_event`` is set,
        ``duration`` seconds have passed or ``max_polls`` polls were made. A vend under way
        when told to stop is finished and confirmed first. Never raises."""
        self._stop = stop_event
        self._deadline = time.monotonic() + duration if duration is not None else None
        self._boot = time.monotonic()
        try:
            self.base_url = self.server_url or self._find_server()
            if self.base_url is None:
                if self.stopping():
                    return
                self.gave_up = True
                self._error("no server found; giving up")
                self._say(f"no server found after {self.find_attempts} attempts; giving up")
                return
            self._register()
            state = "registered" if self.registered else "registration not answered; polling"
            self._say(f"{state} at {self.base_url}")
            self._poll_loop()
        except Exception as exc:  # a simulated device must never crash its host
            logger.exception("%s: unexpected error", self.device_id)
            self._error(f"unexpected error: {exc!r}")

    def stopping(self) -> bool:
        if self._stop.is_set():
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _wait(self, seconds: float) -> None:
        if self._deadline is not None:
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        self._stop.wait(max(0.0, seconds))

    def _poll_loop(self) -> None:
        while not self.stopping():
            if self.max_polls is not None and self.polls >= self.max_polls:
                return
            command = self._poll()
            if command is None or not self._act(command):
                self._wait(self.poll_interval)

    # --- finding the server -------------------------------------------------------------------

    def _find_server(self) -> str | None:
        for _attempt in range(self.find_attempts):
            if self.stopping():
                return None
            address = self._discover()
            if address is not None:
                url = f"http://{address}:{self.http_port}"
                if self._probe(url):
                    return url
            self._wait(self.retry_interval)
        return None

    def _discover(self) -> str | None:
        """One unicast discovery request; the address from the first valid answer."""
        request, prefix = DOCUMENTED_DISCOVERY if self.documented else V2_DISCOVERY
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(request, self.discovery)
            except OSError as exc:
                self._error(f"discovery request not sent: {exc}")
                return None
            deadline = time.monotonic() + self.discovery_wait
            for _datagram in range(32):  # stray datagrams cannot keep us here
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                try:
                    data, _peer = sock.recvfrom(128)
                except (TimeoutError, OSError):
                    return None
                text = data.decode("ascii", errors="replace").strip()
                if not text.startswith(prefix):
                    continue
                address = text[len(prefix) :].strip()
                try:
                    ipaddress.IPv4Address(address)
                except ValueError:
                    continue
                if self.loopback_only and not is_loopback_host(address):
                    self._error(f"discovery answered {address}, outside loopback: ignored")
                    continue
                return address
        return None

    def _probe(self, base_url: str) -> bool:
        """``GET /status``: 200 and a body naming ``vending``, ``flask`` or ``status``."""
        answer = self._request("GET", base_url, "/status", timeout=self.probe_timeout)
        return answer is not None and answer[0] == 200 and any(w in answer[1] for w in PROBE_WORDS)

    # --- the conversation ---------------------------------------------------------------------

    def _register(self) -> None:
        """Once, after boot; any HTTP answer counts as success (the firmware never retries)."""
        if self.documented:
            path = "/esp32/wifi/register"
            body = {
                "device_id": self.poll_id,
                "device_type": "wifi",
                "ip_address": self.ip_address,
                "firmware_version": self.firmware_version,
                "slots_available": self.slots,
                "status": "online",
            }
        else:
            path = "/esp32/register"
            body = {
                "device_id": self.poll_id,
                "ip_address": self.ip_address,
                "status": "online",
                "slots_available": self.slots,
            }
        self.registered = self._post(path, body) is not None

    def _poll(self) -> dict | None:
        """One poll; the command received, or ``None`` when idle or on any error."""
        self.polls += 1
        if self.documented:
            answer = self._request(
                "GET", self.base_url, "/esp32/wifi/command", headers={"Device-ID": self.poll_id}
            )
        else:
            answer = self._request("GET", self.base_url, f"/esp32/commands/{self.poll_id}")
        if answer is None:
            return None
        status, text = answer
        if status != 200:
            self._error(f"poll answered HTTP {status}")
            return None
        body = text.strip()
        if body in ("", "null") or (self.documented and body == "NO_COMMAND"):
            return None
        try:
            command = json.loads(body)
        except ValueError:
            command = None
        if not isinstance(command, dict):
            self._record("command", command=None, raw=body[:200], acted=False, note="not a command")
            return None
        return command

    def _act(self, command: dict) -> bool:
        """Record the command and carry it out; True when it was a vend (which has
        already waited ``after_confirm``)."""
        kind, slot = command.get("command"), command.get("slot")
        known = ("VEND", "STATUS", "RESET") if self.documented else ("VEND",)
        # v2.1 has five motors hard-coded; the documented variant uses the machine's count.
        top = self.slots if self.documented else min(self.slots, V2_MAX_SLOT)
        is_vend = kind == "VEND" and type(slot) is int and 1 <= slot <= top
        acted = is_vend or (kind in known and kind != "VEND")
        note = "" if acted else "ignored"
        self._record(
            "command",
            command=kind,
            slot=slot,
            command_id=command.get("command_id"),
            transaction_id=command.get("transaction_id"),
            acted=acted,
            note=note,
        )
        if is_vend:
            self._vend(slot, command.get("command_id"))
        elif acted and kind == "RESET":
            self._reboot()
        return is_vend

    def _vend(self, slot: int, command_id: object) -> None:
        time.sleep(self.vend_seconds)  # a motor cannot be stopped halfway; finish the cycle
        success = True
        if self.documented and self._random.random() < self.failure_rate:
            success = False
        body = {
            "device_id": self.mac,
            "slot": slot,
            "success": success,
            "message": SUCCESS_MESSAGE if success else FAILURE_MESSAGE,
            "timestamp": self.millis(),
        }
        path = "/esp32/wifi/confirm" if self.documented else "/esp32/confirm"
        if not self.confirms:
            self._record("confirm_dropped", slot=slot, command_id=command_id, body=body)
            self._wait(self.after_confirm)
            return
        answer = self._post(path, body)
        self._record(
            "confirm",
            slot=slot,
            success=success,
            command_id=command_id,  # not on the wire: which command this answers, for witnesses
            body=body,
            status=answer[0] if answer else None,
            answer=answer[1][:500] if answer else "",
        )
        self._wait(self.after_confirm)

    def _reboot(self) -> None:
        """RESET (documented variant): the clock restarts and the device registers again."""
        self._wait(0.1)
        self._boot = time.monotonic()
        self._register()

    # --- HTTP, the way the firmware's client does it -------------------------------------------

    def _post(self, path: str, body: dict) -> tuple[int, str] | None:
        data = json.dumps(body, separators=(",", ":")).encode()
        return self._request(
            "POST", self.base_url, path, body=data, headers={"Content-Type": "application/json"}
        )

    def _request(
        self,
        method: str,
        base_url: str | None,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, str] | None:
        """``(status, body)`` of one request on a fresh connection, or ``None`` when the
        server could not be reached. Redirects are not followed (the firmware does not).

        A request to the server in use that is refused goes to the next ``failover_urls``
        server instead (each tried at most once), which then stays in use."""
        assert base_url is not None
        if base_url == self.base_url and self.failover_urls:
            servers = [base_url, *(u for u in self.failover_urls if u != base_url)]
            for server in servers:
                try:
                    answer = self._send(method, server, path, body, headers, timeout)
                except ConnectionRefusedError as exc:
                    self._error(f"{method} {path} at {server}: {exc}")
                    continue
                except (OSError, http.client.HTTPException) as exc:
                    self._error(f"{method} {path}: {exc or type(exc).__name__}")
                    return None
                self.base_url = server
                return answer
            return None
        try:
            return self._send(method, base_url, path, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            self._error(f"{method} {path}: {exc or type(exc).__name__}")
            return None

    def _send(self, method, base_url, path, body, headers, timeout) -> tuple[int, str]:
        url = urlsplit(base_url)
        connection = http.client.HTTPConnection(
            url.hostname, url.port or 80, timeout=timeout or self.http_timeout
        )
        try:
            connection.request(
                method,
                url.path.rstrip("/") + path,
                body=body,
                headers={"User-Agent": "ESP32HTTPClient", "Connection": "close", **(headers or {})},
            )
            response = connection.getresponse()
            text = response.read(MAX_BODY).decode("utf-8", errors="replace")
            return response.status, text
        finally:
            connection.close()

    # --- records ------------------------------------------------------------------------------

    def _record(self, event: str, **facts) -> None:
        entry = {"event": event, "device_id": self.device_id, "millis": self.millis(), **facts}
        self.witness.append(entry)
        if self.on_record is not None:
            try:
                self.on_record(entry)
            except Exception:  # a reporting bug must not stop the device
                logger.exception("%s: on_record failed", self.device_id)

    def _say(self, text: str) -> None:
        if self.say is not None:
            try:
                self.say(f"{self.device_id} {text}")
            except Exception:  # a reporting bug must not stop the device
                logger.exception("%s: say failed", self.device_id)

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        logger.debug("%s: %s", self.device_id, text)

    def commands(self) -> list[dict]:
        """Every command received, in order (the witness of deliveries)."""
        return [entry for entry in list(self.witness) if entry["event"] == "command"]

    def confirmations(self) -> list[dict]:
        """Every confirmation sent, in order, with the server's HTTP status (None: no answer)."""
        return [entry for entry in list(self.witness) if entry["event"] == "confirm"]

    # --- checks -------------------------------------------------------------------------------

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"server URL has a bad port: {url!r}") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server URL must be http://HOST[:PORT], not {url!r}")
        self._check_host(parts.hostname)

    def _check_host(self, host: str) -> None:
        if self.loopback_only and not is_loopback_host(host):
            raise ServerNotAllowed(
                f"{host} is not a loopback address; this simulator stays on 127.0.0.1 "
                "unless told otherwise (loopback_only=False)"
            )
