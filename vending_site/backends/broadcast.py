""" "Forget what you keep about these": pushed to every process over Redis pub/sub.

A process that keeps rows in memory to spare the database a read (``devices.poll_cache``:
the idle machines) must drop a row when any process of the deployment changes it. A
:class:`Topic` carries those changes: :meth:`Topic.publish` (called after the change's
transaction commits) names the keys that changed; every process that listens receives them
on a daemon thread of its own, subscribed to the topic's channel on the Redis of the default
cache, and hands them to the topic's ``forget`` callback.

A holder may use what it keeps only while :attr:`Topic.listening` is true, and may keep what
it read only if :attr:`Topic.epoch` is the one it saw before the read: the epoch moves on
whenever the subscription is lost (the messages sent meanwhile never arrive), and ``reset``
is called so the holder drops everything. So a lost connection costs reads, never a stale
answer. A message that is lost with the connection up (a publisher that dies between its
commit and its publish) is not detected here: the holder's own time limit bounds it.

Without a Redis cache (the embedded default: SQLite, every process on one host) the topic is
a file under ``DATA_DIR/run/``: a publisher appends a line of keys, and a holder asked for
something first looks whether the file grew (:meth:`Topic.catch_up`: one ``stat``) and
reads what was added. Every process of the host sees an announcement as soon as its
publisher's ``write`` returns. The file is started afresh past :data:`FILE_LIMIT` bytes; a
holder that sees another file (or a shorter one) drops everything.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable, Iterable

import redis
from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed

logger = logging.getLogger(__name__)

NO_FILE = (0, 0)  # looked, and found no file
FILE_LIMIT = 1 << 20  # bytes of announcements before the file is started afresh
RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0)  # pauses between tries, the last one repeated
POLL_SECONDS = 1.0  # how long the listener blocks on one read before it checks its stop
HEALTH_CHECK_SECONDS = 5  # redis-py pings an idle subscription this often: a dead link shows


class Topic:
    """One kind of change, named ``name``; ``forget(keys)`` drops what the holder keeps
    about ``keys``, ``reset()`` drops everything."""

    def __init__(
        self, name: str, *, forget: Callable[[list[str]], None], reset: Callable[[], None]
    ) -> None:
        self.name = name
        self._forget = forget
        self._reset_holder = reset
        self._lock = threading.Lock()
        self._fresh_process()
        os.register_at_fork(after_in_child=self._fresh_process)
        setting_changed.connect(self._settings_changed, weak=False)

    def _fresh_process(self) -> None:
        self._lock = threading.Lock()  # a fork may have copied it held
        self.epoch = 0
        self._pid = os.getpid()
        self._target: tuple[str, str] | bool | None = False  # False: not looked up yet
        self._connected = False
        self._socket = None  # the subscription's, while it is up
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._publisher: redis.Redis | None = None
        self._file_seen: tuple[int, int] | None = None  # (inode, bytes read) of the file

    @property
    def listening(self) -> bool:
        """Whether a change published now, anywhere, reaches this process."""
        target = self._target
        if target is False:
            target = self._look_up()
        if target is None:
            return True  # the file: read at every catch_up()
        if not self._connected:
            self._ensure_listener()
        return self._connected

    def catch_up(self) -> bool:
        """Take in what was announced and not yet heard; True when some of it may still be
        on its way in (a holder must not answer from memory now). Over Redis: whether the
        subscription's socket has unread bytes (the listener thread takes them in; this
        closes the gap until it runs), one ``select`` without waiting. Over the file: read
        what it gained since, one ``stat`` when nothing was added."""
        target = self._target
        if target is False:
            target = self._look_up()
        if target is not None:
            return self._backlog()
        try:
            found = os.stat(self._path())
        except FileNotFoundError:
            found = None
        except OSError:
            return True
        seen = self._file_seen
        if found is None:
            if seen == NO_FILE:
                return False
        elif seen is not None and found.st_ino == seen[0] and found.st_size == seen[1]:
            return False
        with self._lock:
            try:  # again: another thread may have read further meanwhile
                found = os.stat(self._path())
            except FileNotFoundError:
                found = None
            except OSError:
                return True
            return self._read_file(found)

    def _read_file(self, found) -> bool:
        """Read the announcements the file gained (the caller holds the lock)."""
        seen = self._file_seen
        if found is None:
            if seen not in (None, NO_FILE):
                self._lost()  # the file went away: what it said since our read is unknown
            self._file_seen = NO_FILE
            return False
        if seen is None:
            # This process's first look: it keeps nothing yet, so what was said before
            # does not concern it.
            self._file_seen = (found.st_ino, found.st_size)
            return False
        if found.st_ino != seen[0] or found.st_size < seen[1]:
            if seen != NO_FILE:
                self._lost()  # started afresh: what the old one said last is unknown
            seen = (found.st_ino, 0)
        try:
            with open(self._path(), "rb") as stream:
                stream.seek(seen[1])
                added = stream.read(max(found.st_size - seen[1], 0))
        except OSError:
            return True
        complete = added.rfind(b"\n") + 1  # a line still being written waits for its end
        self._file_seen = (found.st_ino, seen[1] + complete)
        for line in added[:complete].splitlines():
            if line:
                self._received(line.decode("utf-8", "replace").split(","))
        return complete < len(added)

    def _path(self) -> str:
        return os.path.join(settings.DATA_DIR, "run", f"broadcast-{self.name}.log")

    def _backlog(self) -> bool:
        sock = self._socket
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed meanwhile: the listener notices it too
            return False

    def publish(self, keys: Iterable[str]) -> None:
        """Tell every process (this one at once) to forget ``keys``. Call it after the
        change's transaction commits. A failure is logged: the holders' time limit covers it."""
        keys = [key for key in keys if key]
        if not keys:
            return
        self._received(keys)
        target = self._target if self._target is not False else self._look_up()
        if target is None:
            self._append(",".join(keys))
            return
        url, channel = target
        try:
            if self._publisher is None:
                self._publisher = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=settings.REDIS_TIMEOUT,
                    socket_timeout=settings.REDIS_TIMEOUT,
                )
            self._publisher.publish(channel, ",".join(keys))
        except redis.RedisError as exc:
            logger.warning("could not publish %s to %s: %s", self.name, channel, exc)

    def _append(self, line: str) -> None:
        path = self._path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as stream:
                stream.write(line + "\n")  # one write of a short line: appended whole
                size = stream.tell()
            if size > FILE_LIMIT:
                os.replace(path, path + ".old")  # holders see another file and start afresh
        except OSError as exc:
            logger.warning("could not announce %s in %s: %s", self.name, path, exc)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening (tests; a process that ends just drops the daemon thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
            self._stopping = threading.Event()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._lost()

    # --- receiving -----------------------------------------------------------------------

    def _received(self, keys: list[str]) -> None:
        self._forget(keys)

    def _lost(self) -> None:
        self._connected = False
        self._socket = None
        self.epoch += 1
        self._reset_holder()

    def _look_up(self) -> tuple[str, str] | None:
        """Where the topic lives: the default cache's Redis and a channel under its key
        prefix (so tests and deployments sharing a Redis stay apart), or None (local)."""
        cache = caches["default"]
        servers = getattr(cache, "_servers", None)
        if not servers or not hasattr(cache, "hit_windows"):
            self._target = None
        else:
            self._target = (servers[0], cache.make_key(f"broadcast.{self.name}"))
        return self._target

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(
                target=self._listen,
                args=(self._target, self._stopping),
                name=f"broadcast-{self.name}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the next look tries again
                logger.exception("could not start the %s listener", self.name)
                return
            self._thread = thread

    def _listen(self, target: tuple[str, str], stopping: threading.Event) -> None:
        url, channel = target
        failures = 0
        while not stopping.is_set():
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=settings.REDIS_TIMEOUT,
                    socket_timeout=POLL_SECONDS + settings.REDIS_TIMEOUT,
                    health_check_interval=HEALTH_CHECK_SECONDS,
                )
                with client.pubsub() as pubsub:
                    pubsub.subscribe(channel)
                    while not stopping.is_set():
                        message = pubsub.get_message(timeout=POLL_SECONDS)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            # What was kept while nobody listened (a read that began before
                            # the loss and ended after it) goes, with every token of then.
                            self.epoch += 1
                            self._reset_holder()
                            # redis-py keeps the socket private; without it no backlog shows.
                            self._socket = getattr(pubsub.connection, "_sock", None)
                            self._connected = True  # from here on nothing is missed
                            if failures:
                                logger.info("listening to %s again", channel)
                            failures = 0
                        elif message["type"] == "message":
                            self._received(message["data"].decode().split(","))
            except (redis.RedisError, OSError) as exc:
                if failures == 0:
                    logger.warning("lost the %s subscription: %s", channel, exc)
                failures += 1
            finally:
                self._lost()
            stopping.wait(RECONNECT_SECONDS[min(max(failures, 1), len(RECONNECT_SECONDS)) - 1])

    def _settings_changed(self, *, setting: str, **kwargs) -> None:
        if setting in ("CACHES", "REDIS_URL", "DATA_DIR"):
            self.stop()
            self._target = False
            self._publisher = None
            self._file_seen = None
