"""``manage.py run_discovery``: answer ESP32 UDP discovery on DISCOVERY_HOST:DISCOVERY_PORT."""

import asyncio
import gc
import ipaddress
import signal
import socket
import sys
import time
from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from devices import discovery
from devices.choices import Direction, Transport
from devices.services import Exchange, log_exchanges
from vending_site.processes.heartbeat import DISCOVERY, Heartbeat


class Command(BaseCommand):
    help = (
        "Answer ESP32_DISCOVERY_REQUEST / DISCOVER_FLASK_SERVER datagrams with this server's "
        "address on the interface facing the sender. Stops cleanly on SIGINT or SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.DISCOVERY_HOST)
        parser.add_argument("--port", type=int, default=settings.DISCOVERY_PORT)
        parser.add_argument(
            "--advertise-ip",
            default=settings.DISCOVERY_ADVERTISE_IP,
            help="Answer with this address instead of the interface's (NAT, containers).",
        )
        parser.add_argument(
            "--retry",
            type=float,
            default=0,
            metavar="SECONDS",
            help="If the port is taken, try again this often instead of exiting.",
        )

    def handle(self, *args, host: str, port: int, advertise_ip: str, retry: float, **options):
        if advertise_ip:
            try:
                ipaddress.IPv4Address(advertise_ip)
            except ValueError:
                raise CommandError(
                    f"DISCOVERY_ADVERTISE_IP / --advertise-ip must be an IPv4 address "
                    f"(the firmware reads one), not {advertise_ip!r}"
                ) from None
        # One thread writes the log in batches, so the event loop only ever answers datagrams.
        recorder = discovery.Recorder(self._log, name="discovery-log").start()

        def record(peer_ip: str, request: bytes, reply: bytes) -> None:
            recorder.submit((peer_ip, request, reply, time.time()))

        # The recorder thread holds the GIL while it builds its queries; a datagram that
        # arrives meanwhile can wait a whole switch interval (5 ms by default) before the
        # loop runs, so hand the GIL over sooner. And freeze what start-up allocated (Django,
        # settings, modules), so the collector's full passes, a pause for the loop too, no
        # longer walk it.
        sys.setswitchinterval(0.0005)
        gc.collect()
        gc.freeze()

        self.heartbeat = None  # started once listening, so "running" means answering
        try:
            protocol = asyncio.run(self._serve(host, port, advertise_ip, record, retry))
        except OSError as exc:
            raise CommandError(f"cannot listen on UDP {host}:{port}: {exc}") from exc
        finally:
            if not recorder.close():
                self.stderr.write("discovery: the log writer did not finish in time")
            if self.heartbeat is not None:
                self.heartbeat.stop()
        if protocol is None:
            self.stdout.write("discovery stopped before it could listen")
            return
        unrecorded = f", not recorded {recorder.unrecorded}" if recorder.unrecorded else ""
        self.stdout.write(
            f"discovery stopped: answered {protocol.answered}, rate-limited {protocol.dropped}"
            f"{unrecorded}"
        )

    async def _serve(self, host, port, advertise_ip, record, retry):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        while retry:
            # Another program may hold the port (the old server on a Pi): wait for it rather
            # than exit, which under `make run` would stop the web server too.
            try:
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probe.bind((host, port))
                probe.close()
                break
            except OSError as exc:
                probe.close()
                self.stderr.write(
                    f"cannot listen on UDP {host}:{port} ({exc}); retrying in {retry:g} s"
                )
                self.stderr.flush()
                try:
                    await asyncio.wait_for(stop.wait(), retry)
                    return None
                except TimeoutError:
                    continue

        def ready(sockname) -> None:
            where = advertise_ip or "the address facing each sender"
            self.stdout.write(f"discovery listening on udp {sockname[0]}:{sockname[1]} ({where})")
            self.stdout.flush()
            listening = {"listening": f"{sockname[0]}:{sockname[1]}", "advertise": where}
            self.heartbeat = Heartbeat(DISCOVERY, detail=listening).start()

        return await discovery.serve(
            host=host,
            port=port,
            advertise_ip=advertise_ip,
            on_discovery=record,
            stop=stop,
            ready=ready,
        )

    @staticmethod
    def _log(batch: list[tuple[str, bytes, bytes, float]]) -> None:
        close_old_connections()
        log_exchanges(
            [
                Exchange(
                    Direction.IN,
                    Transport.WIFI,
                    f"{request.decode('ascii', 'replace').strip()} -> {reply.decode()}",
                    endpoint="udp discovery",
                    remote_addr=peer_ip,
                    at=datetime.fromtimestamp(at, tz=UTC),
                )
                for peer_ip, request, reply, at in batch
            ]
        )
