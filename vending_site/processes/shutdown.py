"""Stopping long-running commands on SIGINT/SIGTERM, safely."""

import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: threading.Event) -> dict[int, Callable]:
    """Set ``stop`` when SIGINT or SIGTERM arrives; returns the handlers it replaced.

    A Python signal handler runs in the main thread between two bytecodes, possibly while
    that thread holds ``stop``'s internal lock inside ``stop.wait()``; calling ``stop.set()``
    right there could deadlock. So the handler only starts a thread that sets it.
    """

    def handler(signum, frame) -> None:
        threading.Thread(target=stop.set, name="stop-on-signal", daemon=True).start()

    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
