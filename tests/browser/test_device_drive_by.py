"""A web page on another origin cannot make its visitor's browser play a machine.

The browser runs on the machine's own host here (127.0.0.1, the address the machine is
bound to), so binding cannot help: only the device endpoints' refusal of what browsers send
(an ``Origin``, ``Sec-Fetch-Site``, cookies, form bodies) stands between the page and the
vend. The page, served from 127.0.0.2 (another origin), tries every device endpoint with
every tool a page has without CORS: ``<img>``, no-cors ``fetch`` (GET and POST, text/plain
and JSON bodies) and an auto-submitted form.
"""

import http.server
import threading

import pytest
from django.utils import timezone

from devices.choices import CommandState
from devices.models import Command, Device
from tests.factories import stocked_device
from tests.scratch.net import free_port
from transactions.models import Transaction
from transactions.services import request_vend

MACHINE = "ESP32_6CC8404FE03C"
MAC = "6C:C8:40:4F:E0:3C"

EVIL_PAGE = """<!doctype html>
<html><body>
<form id="f" method="post" action="{server}/esp32/confirm" enctype="text/plain" target="sink">
  <input name='{{"device_id": "{mac}", "slot": 1, "success": true, "x": "' value='"}}'>
</form>
<iframe name="sink"></iframe>
<script>
const server = "{server}";
const tries = [
  fetch(server + "/esp32/commands/{machine}", {{mode: "no-cors"}}),
  fetch(server + "/esp32/wifi/command", {{mode: "no-cors"}}),
  fetch(server + "/esp32/confirm", {{mode: "no-cors", method: "POST",
    body: JSON.stringify({{device_id: "{mac}", slot: 1, success: true}})}}),
  fetch(server + "/esp32/wifi/confirm", {{mode: "no-cors", method: "POST",
    headers: {{"Content-Type": "text/plain"}},
    body: JSON.stringify({{device_id: "{machine}", slot: 1, success: false}})}}),
  fetch(server + "/esp32/register", {{mode: "no-cors", method: "POST",
    body: JSON.stringify({{device_id: "{machine}", slots_available: 1}})}}),
  fetch(server + "/esp32/wifi/register", {{mode: "no-cors", method: "POST",
    body: JSON.stringify({{device_id: "ESP32_EE0000000001", slots_available: 5}})}}),
  new Promise((done) => {{
    const img = new Image();
    img.onload = img.onerror = done;
    img.src = server + "/esp32/commands/{machine}?img=1";
  }}),
];
document.getElementById("f").submit();
Promise.allSettled(tries).then(() => setTimeout(() => {{ document.title = "done"; }}, 500));
</script>
</body></html>
"""


def serve_page(html: str) -> tuple[str, http.server.HTTPServer]:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.2", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.2:{server.server_address[1]}/", server


@pytest.mark.allow_console_errors  # the refused loads are logged by Chromium as errors
def test_a_page_on_another_origin_takes_fakes_and_registers_nothing(live_server_url, page):
    machine = stocked_device(MACHINE, bound_address="127.0.0.1", is_active=True)
    Device.objects.filter(pk=machine.pk).update(last_seen=timezone.now())
    machine.refresh_from_db()
    txn = request_vend(device=machine, slot_number=1)
    url, evil = serve_page(EVIL_PAGE.format(server=live_server_url, machine=MACHINE, mac=MAC))
    try:
        page.goto(url)
        page.wait_for_function("document.title === 'done'")
    finally:
        evil.shutdown()

    assert Command.objects.get(transaction=txn).state == CommandState.QUEUED
    assert Transaction.objects.get(pk=txn.pk).state == "queued"
    machine.refresh_from_db()
    assert machine.slot_count == 5
    assert not Device.objects.filter(device_id="ESP32_EE0000000001").exists()
