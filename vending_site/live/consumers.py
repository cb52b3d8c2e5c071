"""``/ws/events/``: the dashboard's live feed of device, transaction, stock and log events.

Messages to the page are ``{"id", "kind", "payload", "at"}``, in increasing ``id``. The page
may send ``{"type": "catch_up", "since": <id>}`` after a reconnect to be sent every event it
missed (at most ``CATCH_UP_LIMIT``; it reloads its state from the API when told
``{"type": "reset"}``). With Redis, events arrive pushed through the channel layer. Without
it (the in-memory layer reaches no other process), the consumer tails the outbox every
``TAIL_SECONDS`` instead, so an event from the serial bridge or a cron job still arrives
within a second.

A frame the consumer cannot read (binary, larger than ``MAX_FRAME_BYTES``, nested deeper than
``MAX_DEPTH``, not JSON) is answered ``{"type": "error", "detail": ...}`` and the socket
stays open; its ``MAX_BAD_FRAMES``-th such frame closes it with ``CLOSE_ABUSE`` (1008,
policy violation). Nothing of it is logged as an error.

Who may open the socket, and which events each user is sent, is decided once when it opens
(:mod:`vending_site.live.audience`: the dashboard's permissions); refused: ``CLOSE_FORBIDDEN``.
"""

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from vending_site.live.audience import audience_for, for_page
from vending_site.live.events import EVENTS_GROUP, layer_crosses_processes
from vending_site.models import LiveEvent

TAIL_SECONDS = 0.25
CATCH_UP_LIMIT = 500
CLOSE_FORBIDDEN = 4403
# The page sends only {"type": "catch_up", "since": <id>}: a few dozen bytes, depth 1.
MAX_FRAME_BYTES = 4096
MAX_DEPTH = 8
MAX_BAD_FRAMES = 20
CLOSE_ABUSE = 1008


class BadFrame(ValueError):
    """A frame that is not a message of ours; ``str()`` says why, for the sender."""


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings ignored).

    Read before ``json.loads``, whose recursion a deep enough frame exhausts.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def decode_frame(text_data: str | None, bytes_data: bytes | None) -> object:
    """The JSON value of a text frame; :class:`BadFrame` for anything else."""
    if text_data is None:
        raise BadFrame("send text frames of JSON, not binary ones")
    if len(text_data) > MAX_FRAME_BYTES or len(text_data.encode()) > MAX_FRAME_BYTES:
        raise BadFrame(f"frames are at most {MAX_FRAME_BYTES} bytes")
    if nesting_depth(text_data) > MAX_DEPTH:
        raise BadFrame(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text_data)
    except ValueError:  # JSONDecodeError, and a lone surrogate's UnicodeError
        raise BadFrame("a frame must be one JSON value") from None


@database_sync_to_async
def events_after(last_id: int, limit: int) -> list[dict]:
    return [e.as_message() for e in LiveEvent.objects.filter(id__gt=last_id)[:limit]]


@database_sync_to_async
def latest_event_id() -> int:
    return LiveEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


NO_LAYER = "vending.no-layer"  # an alias that is never configured: no channel layer


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def __call__(self, scope, receive, send):
        # Refused before Channels starts its dispatch loop: the loop would take a channel on
        # the layer and wait on it, and the server answers 403 only when the application
        # returns, after the loop has cancelled that wait (through nginx, a refusal once
        # went unanswered for 15 s in CI). A refusal costs no channel layer round trip.
        self.audience = await database_sync_to_async(audience_for)(scope.get("user"))
        if self.audience is None:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN})
            return None
        # The in-memory layer reaches only this process, where the outbox tail already brings
        # every event: skip it, and the idle receive loop it would run for every socket.
        if not layer_crosses_processes():
            self.channel_layer_alias = NO_LAYER
        return await super().__call__(scope, receive, send)

    async def connect(self) -> None:
        self.last_id = await latest_event_id()
        self.tail = None
        self.bad_frames = 0
        if self.channel_layer is not None:
            await self.channel_layer.group_add(EVENTS_GROUP, self.channel_name)
        await self.accept()
        if self.channel_layer is None:
            self.tail = asyncio.create_task(self._tail())

    async def disconnect(self, code: int) -> None:
        if getattr(self, "tail", None) is not None:
            self.tail.cancel()
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(EVENTS_GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        try:
            content = decode_frame(text_data, bytes_data)
        except BadFrame as bad:
            await self._refuse(str(bad))
            return
        await self.receive_json(content, **kwargs)

    async def _refuse(self, detail: str) -> None:
        """Answer an unreadable frame; close the socket of a sender that keeps at it."""
        self.bad_frames += 1
        await self.send_json({"type": "error", "detail": detail})
        if self.bad_frames >= MAX_BAD_FRAMES:
            await self.close(code=CLOSE_ABUSE)

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "catch_up":
            await self.send_json({"type": "error", "detail": "send {type: catch_up, since: id}"})
            return
        since = content.get("since")
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            await self.send_json({"type": "error", "detail": "since must be an event id"})
            return
        missed = await events_after(since, CATCH_UP_LIMIT + 1)
        if len(missed) > CATCH_UP_LIMIT:
            # Too much happened: the page reloads its state instead of replaying it all.
            self.last_id = await latest_event_id()
            await self.send_json({"type": "reset", "last_id": self.last_id})
            return
        self.last_id = since
        await self._send_new(missed)

    async def vending_event(self, message: dict) -> None:
        await self._send_new([message["event"]])

    async def vending_events(self, message: dict) -> None:
        """Several events of one database transaction, pushed together."""
        await self._send_new(message["events"])

    async def _send_new(self, events: list[dict]) -> None:
        for event in events:
            if event["id"] > self.last_id:
                self.last_id = event["id"]
                if self.audience.admits(event):
                    await self.send_json(for_page(event))

    async def _tail(self) -> None:
        while True:
            await asyncio.sleep(TAIL_SECONDS)
            await self._send_new(await events_after(self.last_id, CATCH_UP_LIMIT))
