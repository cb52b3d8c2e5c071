"""The scratch stack: throwaway databases, the project's real processes, one small HTTP
client and one ``free_port``, for the tests that start processes and for the benchmarks.

Why here, under ``tests/``: most of its users are tests (integration, faults, deploy,
browser, and the app tests that start a command), and the benchmarks already lean on the
test tree (``tests/accounting.py`` checks their stock). The benchmarks import it as
``tests.scratch``; the shipped server imports neither. One home means one way to create a
database, start a worker, wait for it and end it, so a fix to teardown reaches every user.

- :mod:`tests.scratch.net`: ``free_port``, ``reachable``, the HTTP client, ``wait_http``,
  ``wait_for``.
- :mod:`tests.scratch.databases`: scratch PostgreSQL databases (a migrated template cloned
  per stack), Redis databases, the maintenance connection.
- :mod:`tests.scratch.stack`: :class:`~tests.scratch.stack.Stack`, children started with
  one environment, logged to files, waited for and ended.
- :mod:`tests.scratch.children`: processes that share the running pytest's own test
  database (a management command beside the test, its output read line by line).
- :mod:`tests.scratch.seed`: the child side (``python -m tests.scratch.seed setup|report|
  fleet '{...}'``): writes into a scratch database through the project's own services.

Everything talks to loopback only, and every wait is bounded.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the children's working directory
