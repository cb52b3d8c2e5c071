"""The files of prometheus_client's multiprocess mode: folding dead processes' counts into an
archive, and the lock a scrape shares with that folding. No Django here, so a process that
never loads the application (granian's main process, see ``deploy/web.py``) can compact a
directory when its workers have stopped.

Each process writes ``<kind>_<pid>.db`` (``counter``, ``histogram``, ``gauge_all``, ...). A
process is dead when ``kill(pid, 0)`` says there is no such process: a child that exited but
was not yet reaped (a zombie) still counts as alive, so its files wait for the next
compaction: a worker granian starts in place of a dead one folds them as it loads
:mod:`vending_site.observability.metrics`, and ``deploy/web.py`` calls
:func:`compact_dead_processes` once
granian has stopped its workers. Writes go to a shared file mapping, so a process killed with
SIGKILL loses nothing it had counted.

Importing this module imports prometheus_client, which reads ``PROMETHEUS_MULTIPROC_DIR``
once: the variable must be in the environment first (settings export it).
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

LOCK_NAME = ".compact.lock"

# Kinds whose values add up across processes, so a dead process' file can be folded in.
ADDITIVE_KINDS = ("counter", "histogram", "summary")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def pid_of(path: str) -> int | None:
    stem = os.path.basename(path)[: -len(".db")]
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def compact_dead_processes(directory: Path) -> int:
    """Fold the counter/histogram files of dead processes into ``<kind>_archive.db`` and
    delete their gauge files. Returns how many files were removed. Safe to run from several
    processes at once (an exclusive file lock serialises them)."""
    with open(directory / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dead: dict[str, list[str]] = {}
        for path in sorted(glob.glob(str(directory / "*.db"))):
            pid = pid_of(path)
            if pid is not None and not pid_alive(pid):
                dead.setdefault(os.path.basename(path).split("_", 1)[0], []).append(path)
        for kind, paths in dead.items():
            if kind in ADDITIVE_KINDS:
                _fold_into_archive(directory, kind, paths)
            for path in paths:
                os.remove(path)
    return sum(len(paths) for paths in dead.values())


def _fold_into_archive(directory: Path, kind: str, paths: list[str]) -> None:
    """Add ``paths``' values to ``<kind>_archive.db`` by writing a new archive beside it and
    renaming it over the old one (the temporary name does not end in ``.db``, so no scrape
    reads it)."""
    archive_path = directory / f"{kind}_archive.db"
    draft_path = directory / f".{kind}_archive.draft"
    if archive_path.exists():
        shutil.copyfile(archive_path, draft_path)
    else:
        draft_path.unlink(missing_ok=True)
    draft = MmapedDict(str(draft_path))
    try:
        for path in paths:
            for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(path):
                current, _ts = draft.read_value(key)
                draft.write_value(key, current + value, timestamp)
    finally:
        draft.close()
    os.replace(draft_path, archive_path)


@contextmanager
def compaction_paused(directories: Iterable[Path]):
    """Hold every directory's compaction lock shared: no compaction can move counts between
    files while a scrape reads them. Directories are locked in sorted order; compaction takes
    only one lock, so this cannot deadlock with it."""
    with ExitStack() as stack:
        for directory in sorted(set(directories)):
            try:
                lock = stack.enter_context(open(directory / LOCK_NAME, "a"))
            except OSError:  # a read-only directory: nobody compacts it from here either
                continue
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield
