"""``run_notifier``'s loop beside sending: the periodic alert checks and pruning."""

import sys
import threading
import types
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from vending_site.management.commands import run_notifier
from vending_site.notify.worker import Notifier


def test_periodic_tasks_run_the_alert_checks_when_the_alerts_module_exists(monkeypatch):
    calls = []
    evaluation = types.ModuleType("vending_site.alerts.evaluation")
    evaluation.run_checks = lambda *, now=None: calls.append(now)
    monkeypatch.setitem(sys.modules, "vending_site.alerts.evaluation", evaluation)

    run_notifier.periodic_tasks()

    assert calls == [None]


def test_periodic_tasks_do_nothing_without_the_alerts_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "vending_site.alerts.evaluation", None)  # ImportError

    run_notifier.periodic_tasks()


@pytest.mark.django_db(transaction=True)
def test_a_failing_periodic_task_neither_stops_the_loop_nor_the_next_rounds():
    rounds = []
    stop = threading.Event()

    def flaky() -> None:
        rounds.append(1)
        if len(rounds) >= 3:
            stop.set()
        raise RuntimeError("an alert rule's bug")

    notifier = Notifier(workers=1, poll=0.01, periodic=[(0.01, flaky)])
    thread = threading.Thread(target=notifier.run, args=(stop,))
    thread.start()
    thread.join(10)

    assert not thread.is_alive() and len(rounds) >= 3


@pytest.mark.django_db(transaction=True)
def test_once_sends_what_is_due_and_exits():
    out = StringIO()
    call_command("run_notifier", "--once", stdout=out)
    assert out.getvalue().strip() == "sent 0"


def test_a_worker_count_below_one_is_refused():
    with pytest.raises(CommandError, match="--workers must be at least 1"):
        call_command("run_notifier", "--workers", "0", stdout=StringIO())
