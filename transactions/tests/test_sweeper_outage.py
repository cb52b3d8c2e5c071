"""The sweeper process outlives a database that goes away (found by restarting PostgreSQL
under load: tests/faults/test_postgres_restart.py)."""

import threading
from io import StringIO

import pytest
from django.db import OperationalError

from transactions.management.commands import sweep_commands


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_survives_a_database_that_fails_while_it_prunes_live_events(monkeypatch):
    stop = threading.Event()
    calls = []

    def prune_then_fail_once():
        calls.append(1)
        if len(calls) == 1:  # the sweep itself went through; the server restarts now
            raise OperationalError("server closed the connection unexpectedly")
        stop.set()
        return 0

    monkeypatch.setattr(sweep_commands, "prune_live_events", prune_then_fail_once)
    command = sweep_commands.Command(stdout=StringIO(), stderr=StringIO())
    command.sweep_until(stop, 0.01)
    assert len(calls) == 2  # it swept again after the failure
    assert "sweep failed: server closed the connection unexpectedly" in command.stderr.getvalue()
