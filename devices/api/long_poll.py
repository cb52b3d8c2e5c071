"""Long-poll for the WiFi polls (``DEVICE_LONG_POLL_SECONDS``, off by default).

The poll views stay the DRF views of :mod:`devices.api.device_views`, with every check they
make (network allow-list in the middleware, token, throttles, approval); the URLs serve
them through :func:`holding`, a thin async view that runs the DRF view as it is, and then,
when the answer is idle and may be held (see ``services.may_hold_poll``), waits without
holding a thread:

- woken through the channel layer: ``queue_command`` sends to the group ``device.<pk>``
  after its commit (with Redis this crosses processes; the in-memory layer only reaches
  polls held in the same process);
- and looking in the database every ``LOOK_INTERVAL`` (no Redis) or ``GUARD_INTERVAL``
  (Redis, in case a wake-up was lost) seconds, so a command queued by another process is
  found without Redis too.

The command is claimed (the same conditional update as an ordinary poll, so one command is
delivered once) only when the wait ends, right before the answer is sent. A client that
disconnects meanwhile cancels the view (Django's ASGI handler does so on
``http.disconnect``): nothing is claimed for it. Under WSGI (or Django's sync test client)
the request is not an ``ASGIRequest`` and the poll is answered at once, as without
long-poll: a sync worker would be blocked for the whole hold.

Production serves HTTP with granian (WSGI threads, ``deploy/web.py``) and Daphne only for
``/ws/``, so there the polls are answered at once whatever this setting says. That is the
decision, not an accident: a held poll would occupy one of a node's
``WEB_WORKERS x WEB_THREADS`` threads (16 by default) for up to 2 s, and a fleet polling every
2 s would hold them all. ``deploy/web.py`` logs a warning at start and ``check_system`` warns
when long-poll is set and the web server is a WSGI one (granian or gunicorn); an operator who
wants long-poll there routes the firmware's poll paths to the Daphne upstream in nginx,
knowing that Daphne fails polls at a fleet size the WSGI servers still answer
(``bench/fleet_polling.py``, docs/benchmarks.md).

The hold never goes past ``DEVICE_LONG_POLL_SECONDS`` (at most 2 s, checked in settings)
from the moment the request reached the view, inside the firmware's 3 s read timeout.
"""

import asyncio
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.views.decorators.csrf import csrf_exempt

from devices.services import deliver_next_command, device_group, has_deliverable_command
from vending_site import logging as vlog
from vending_site.events import layer_crosses_processes

from .device_views import HeldPoll, PollEndpoint

logger = vlog.get_logger(__name__)

LOOK_INTERVAL = 0.25  # seconds between database looks when wake-ups may not reach us
GUARD_INTERVAL = 1.0  # with a cross-process layer: a look in case a wake-up was lost


def holding(view_class: type[PollEndpoint], *, enabled: bool | None = None):
    """The view serving ``view_class`` at its URL: with long-poll on (``enabled``, default
    ``DEVICE_LONG_POLL_SECONDS > 0`` when the URLs load), an async view that may hold idle
    answers; with it off, the DRF view itself, exactly as without this module."""
    sync_view = view_class.as_view()
    if enabled is None:
        enabled = settings.DEVICE_LONG_POLL_SECONDS > 0
    if not enabled:
        return sync_view

    @csrf_exempt
    async def view(request, *args, **kwargs):
        started = time.monotonic()
        seconds = settings.DEVICE_LONG_POLL_SECONDS
        request.may_hold = seconds > 0 and isinstance(request, ASGIRequest)
        response = await sync_to_async(sync_view)(request, *args, **kwargs)
        held: HeldPoll | None = getattr(response, "hold", None)
        if held is None:
            return response
        # The checks' connection is not kept through the hold: every machine polls all the
        # time, so held connections would add up to one per machine (max_connections).
        await sync_to_async(close_old_connections)()
        command = await wait_for_command(held, deadline=started + seconds)
        return response if command is None else view_class.answer(command)

    # DeviceNetworkMiddleware and the OpenAPI generator look for the view class here.
    view.view_class = view_class
    view.cls, view.initkwargs = sync_view.cls, sync_view.initkwargs
    return view


def at_once(view_class: type[PollEndpoint]):
    """The view serving ``view_class`` under a WSGI server (``vending_site.urls_wsgi``):
    every poll answered at once, whatever ``DEVICE_LONG_POLL_SECONDS`` says."""
    return holding(view_class, enabled=False)


def _deliver_if_queued(held: HeldPoll):
    if not has_deliverable_command(device_pk=held.device.pk, kinds=held.kinds):
        return None
    return deliver_next_command(
        device=held.device,
        kinds=held.kinds,
        endpoint=held.endpoint,
        remote_addr=held.remote_addr,
    )


async def wait_for_command(held: HeldPoll, *, deadline: float):
    """Wait until a command for ``held.device`` is claimed for this poll, or ``deadline``
    (``time.monotonic()``) passes: the command, or ``None``."""
    wake = await _Wake.subscribe(device_group(held.device.pk))
    interval = GUARD_INTERVAL if wake.crosses_processes else LOOK_INTERVAL
    try:
        # Bounded: every turn waits until the next look or the deadline, whichever is first.
        while (remaining := deadline - time.monotonic()) > 0:
            await wake.wait(min(interval, remaining))
            if deadline - time.monotonic() <= 0:
                break
            command = await sync_to_async(_deliver_if_queued)(held)
            if command is not None:
                return command
        return None
    finally:
        await wake.close()


class _Wake:
    """A held poll's subscription to its device's group. A channel layer that fails (Redis
    down) is dropped with a warning: the poll goes on looking in the database."""

    def __init__(self, layer, group: str, channel: str | None):
        self.layer, self.group, self.channel = layer, group, channel
        self.receiver: asyncio.Future | None = None
        self.crosses_processes = channel is not None and layer_crosses_processes()

    @classmethod
    async def subscribe(cls, group: str) -> "_Wake":
        layer = get_channel_layer()
        channel = None
        if layer is not None:
            try:
                channel = await layer.new_channel()
                await layer.group_add(group, channel)
            except Exception:  # the database looks still find the command
                logger.warning("long_poll_layer_failed", group=group, exc_info=True)
                channel = None
        return cls(layer, group, channel)

    async def wait(self, timeout: float) -> None:
        """Return on a wake-up or after ``timeout`` seconds."""
        if self.channel is None:
            await asyncio.sleep(timeout)
            return
        if self.receiver is None:
            self.receiver = asyncio.ensure_future(self.layer.receive(self.channel))
        done, _ = await asyncio.wait({self.receiver}, timeout=timeout)
        if self.receiver in done:
            receiver, self.receiver = self.receiver, None
            if receiver.exception() is not None:
                logger.warning("long_poll_layer_failed", group=self.group, exc_info=True)
                self.channel = None

    async def close(self) -> None:
        if self.receiver is not None:
            self.receiver.cancel()
        if self.channel is not None:
            try:
                await self.layer.group_discard(self.group, self.channel)
            except Exception:  # the group's entry expires by itself
                logger.warning("long_poll_layer_failed", group=self.group, exc_info=True)
