"""Sending to the channel layer from synchronous code, on one event loop per process.

asgiref's ``async_to_sync``, called from a thread with no event loop (a WSGI request
thread, the serial bridge, a cron command), starts a new thread and a new event loop for
every call, and channels_redis opens a new Redis connection for every loop: milliseconds of
CPU for every live event and every wake-up, several per vend. Here one daemon thread per
process runs one event loop for the life of the process, so the layer's connections are made
once and reused. A call still waits for its send, bounded by its timeout, as before.
"""

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


def _sender_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread, _pid
    with _lock:
        # A forked child inherits the variables but not the thread: it starts its own.
        if _loop is None or _pid != os.getpid() or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="channel-layer-sender", daemon=True
            )
            thread.start()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


def run(coroutine: Coroutine[Any, Any, Any], *, timeout: float) -> Any:
    """Run ``coroutine`` on this process's sender loop and return its result; its exception
    is raised here, and ``TimeoutError`` when it has not finished within ``timeout`` seconds
    (it is cancelled then)."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _sender_loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise
