"""A daemon thread of this process that runs an action every few seconds: the write-behind
half of what hot paths count in memory (``vending_site.http.deferred_throttle``,
``vending_site.observability.metrics.Tally``).

The thread starts on the first :meth:`Ticker.ensure` (so a WSGI server's forked workers each
start their own, after the fork), starts again if it died, and runs the action one last
time when the process exits normally (unless made with ``last_tick=False``: an action that
only reads). A failing action is logged once per run of failures, not every tick; ``cleanup``
runs in the thread when it ends (to close what it opened: its database connection).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Ticker:
    def __init__(
        self,
        name: str,
        seconds: float,
        action: Callable[[], object],
        *,
        last_tick: bool = True,
        cleanup: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.seconds = seconds  # read before every wait: may be changed while it runs
        self.action = action
        self.last_tick = last_tick
        self.cleanup = cleanup
        self._reset()
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.stop)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failing = False
        self._running = False  # set by the thread itself: the cheap test of ensure()

    def ensure(self) -> None:
        """Start the thread unless it runs (cheap when it does)."""
        if self._running:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(
                target=self._run, args=(self._stopping,), name=self.name, daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the next ensure() tries again
                logger.exception("could not start %s", self.name)
                return
            self._thread = thread

    def _run(self, stopping: threading.Event) -> None:
        self._running = True
        try:
            while not stopping.wait(self.seconds):
                self.tick()
        finally:
            self._running = False
            if self.cleanup is not None:
                try:
                    self.cleanup()
                except Exception:
                    logger.warning("%s could not clean up", self.name, exc_info=True)

    @property
    def running(self) -> bool:
        """Whether this process's thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def tick(self) -> None:
        """Run the action now, in the calling thread; a failure is logged, not raised."""
        try:
            self.action()
        except Exception:
            if not self._failing:
                logger.warning(
                    "%s failed; it tries again every %g s", self.name, self.seconds, exc_info=True
                )
            self._failing = True
        else:
            if self._failing:
                logger.info("%s works again", self.name)
            self._failing = False

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and run the action once more, unless ``last_tick`` is off (exit,
        tests)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
            self._stopping = threading.Event()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.last_tick:
            self.tick()
