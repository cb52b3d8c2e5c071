"""The curl walk-throughs of README.md and docs/protocol.md, run as a person pasting them one
command at a time would: each blank-line-separated step, with a pause longer than the time a
machine stays online without being heard from, against the real server.

The trial found the README's walk-through failing when pasted slowly (the machine went
offline between its hello and the vend) and never showing the vend's 202 body.
"""

import os
import re
import signal
import subprocess

import pytest
from django.conf import global_settings
from django.contrib.auth import get_user_model

from inventory.demo import DEMO_DEVICE_ID, load_demo_data
from tests.scratch import ROOT
from tests.scratch.children import start_server, stop
from tests.scratch.net import free_port, wait_http
from transactions.choices import TransactionState
from transactions.models import Transaction

pytestmark = pytest.mark.django_db(transaction=True)

OFFLINE_AFTER = 3  # the server's DEVICE_OFFLINE_AFTER here (10 s by default)
PAUSE = OFFLINE_AFTER + 1  # longer than a machine stays online unheard
SHORT_PAUSE = 1
# The steps a slow paste can break get the long pause before them: the vend (is the machine
# still online since its hello?) and the poll (is the vend still queued?). Elsewhere a short
# one: a long pause there proves nothing more and cost the suite a minute of CI.
SLOW_PASTE_BREAKS = ("/api/v1/vend/", "/esp32/commands/")
PASSWORD = "change-me-please"  # the one the walk-throughs start the server with


def walkthrough(path: str, marker: str) -> list[str]:
    """The ```sh block of ``path`` containing ``marker``, split into its steps."""
    text = (ROOT / path).read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    block = next(b for b in blocks if marker in b)
    return [step.strip() for step in block.split("\n\n") if step.strip()]


def pause_before(step: str) -> int:
    return PAUSE if any(part in step for part in SLOW_PASTE_BREAKS) else SHORT_PAUSE


@pytest.fixture
def server(settings):
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS  # the server's own hashers
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    load_demo_data()
    port = free_port()
    process = start_server(port, DEVICE_OFFLINE_AFTER=str(OFFLINE_AFTER))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health")
        yield url
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(
    ("path", "marker", "slot"),
    [("README.md", "walkthrough-1", 1), ("docs/protocol.md", "CONFIRM_ID=ESP32_DEMO", 3)],
    ids=["README", "protocol"],
)
def test_the_curl_walkthrough_works_pasted_a_step_at_a_time(server, path, marker, slot):
    steps = walkthrough(path, marker)
    assert len(steps) >= 5, steps
    script = "\n".join(
        f"sleep {pause_before(step)}\n{step.replace('http://localhost:5000', server)}"
        for step in steps[1:]
    )
    script = steps[0].replace("http://localhost:5000", server) + "\n" + script
    assert script.count(f"sleep {PAUSE}") >= 2, steps  # the vend and the poll are there
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: nothing it starts outlives the test
        env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    try:
        output, _ = process.communicate(timeout=len(steps) * PAUSE + 60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    assert process.returncode == 0, output
    # The 202 body is shown: the vend, queued on the demo machine.
    assert re.search(r'"state":\s*"queued"', output), output
    assert DEMO_DEVICE_ID in output
    assert re.search(r'"command":\s*"VEND"', output), output
    txn = Transaction.objects.get()
    assert (txn.device.device_id, txn.slot_number) == (DEMO_DEVICE_ID, slot)
    assert txn.state == TransactionState.SUCCEEDED, output
    assert re.search(rf'"id":\s*"{txn.pk}".*"state":\s*"succeeded"', output, re.DOTALL), output
