"""What bench/poll_profile.py and bench/vend_profile.py share: timed rounds and a cProfile run
of one request repeated, printed the same way."""

import cProfile
import io
import pstats
import time
from collections.abc import Callable


def timed_rounds(action: Callable[[], object], count: int, what: str, rounds: int = 3) -> None:
    """Run ``action`` ``count`` times, ``rounds`` times over; print wall and CPU per ``what``.

    CPU time as well as wall time: on a shared machine the wall clock also counts whatever
    else ran meanwhile. The best round's CPU is the figure to compare.
    """
    results = []
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(count):
            action()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        results.append(cpu)
        print(
            f"{count} {what}s: {elapsed:.2f} s wall ({elapsed / count * 1e6:.0f} µs per {what}, "
            f"{count / elapsed:.0f}/s), {cpu / count * 1e6:.0f} µs CPU per {what}"
        )
    cpu = min(results)
    print(
        f"best of {rounds}: {cpu / count * 1e6:.0f} µs CPU per {what}, "
        f"{count / cpu:.0f} {what}s/s of CPU"
    )


def profiled(action: Callable[[], object], count: int, what: str) -> cProfile.Profile:
    """Run ``action`` ``count`` times under cProfile; print Python calls per ``what``."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        action()
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(
        f"profiled: {stats.total_calls / count:.0f} Python function calls per {what} "
        "(the figure the machine's load does not change)"
    )
    return profiler


def print_top(profiler: cProfile.Profile, top: int) -> None:
    """The ``top`` functions by own time, then by cumulative time."""
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        print(f"--- top {top} by {order} ---")
        print("\n".join(out.getvalue().splitlines()[4:]))
