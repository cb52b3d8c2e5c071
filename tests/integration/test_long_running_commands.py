"""The long-running processes `make run` starts behave as processes should."""

import socket

import pytest

from tests.scratch.children import read_until, start_command, stop
from tests.scratch.net import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_sweeper_runs_until_sigterm_and_exits_cleanly():
    process = start_command("sweep_commands", "--every", "0.2")
    try:
        read_until(process, "sweeping every 0.2 s")
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "sweeper stopped" in output


def test_discovery_waits_for_a_taken_port_instead_of_exiting():
    port = free_port(2)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", port))
    process = start_command(
        "run_discovery", "--host", "127.0.0.1", "--port", str(port), "--retry", "0.2"
    )
    try:
        read_until(process, "retrying in 0.2 s")
        holder.close()
        read_until(process, "discovery listening")
    finally:
        holder.close()
        code, output = stop(process)
    assert code == 0, output
