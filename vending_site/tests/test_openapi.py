"""The OpenAPI schema: generated without warnings, complete, and its docs page served offline."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from django.core.management import call_command
from django.urls import Resolver404, resolve

DEVICE_PATHS = [
    "/esp32/register",
    "/esp32/commands/{device_id}",
    "/esp32/confirm",
    "/esp32/wifi/register",
    "/esp32/wifi/command",
    "/esp32/wifi/confirm",
]


@pytest.fixture(scope="module")
def schema(django_db_blocker, tmp_path_factory) -> dict:
    """Generated once by `manage.py spectacular --validate --fail-on-warn`: a warning or an
    invalid schema makes the command fail, and so every test here."""
    target = tmp_path_factory.mktemp("schema") / "schema.yaml"
    with django_db_blocker.unblock():
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    return yaml.safe_load(target.read_text())


def op(schema, path: str, method: str) -> dict:
    """An operation by path, whatever trailing slash the URL pattern gave it."""
    for candidate, operations in schema["paths"].items():
        if candidate.rstrip("/") == path.rstrip("/"):
            return operations[method]
    raise AssertionError(f"{path} is not in the schema")


def test_schema_generates_without_warnings_and_validates(schema):
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Vending server API"


def test_every_device_endpoint_of_both_dialects_is_documented(schema):
    for path in DEVICE_PATHS:
        assert path in schema["paths"], path


def test_rest_endpoints_are_documented_and_the_dashboard_is_not(schema):
    paths = schema["paths"]
    for path, method in (
        ("/api/v1/vend/{slot_id}", "post"),
        ("/api/v1/transactions", "get"),
        ("/api/v1/transactions/{id}", "get"),
        ("/api/v1/transactions/{id}/cancel", "post"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{device_id}/commands", "post"),
        ("/api/v1/auth/token", "post"),
        ("/api/v1/auth/token/refresh", "post"),
        ("/esp32/devices/list", "get"),
        ("/esp32/devices/select", "post"),
        ("/esp32/devices/auto-select", "post"),
        ("/status", "get"),
        ("/health", "get"),
    ):
        assert (
            "200" in op(schema, path, method)["responses"]
            or "202" in op(schema, path, method)["responses"]
        ), path
    assert not [p for p in paths if p.startswith("/dashboard/")]
    assert op(schema, "/vend/{slot_id}", "post")["deprecated"] is True
    assert "deprecated" not in op(schema, "/api/v1/vend/{slot_id}", "post")
    detail = op(schema, "/api/v1/transactions/{id}", "get")
    assert [(p["name"], p["schema"].get("format")) for p in detail["parameters"]] == [
        ("id", "uuid")
    ]


def test_the_documented_poll_shows_the_plain_text_idle_answer(schema):
    content = schema["paths"]["/esp32/wifi/command"]["get"]["responses"]["200"]["content"]
    examples = content["text/plain"]["examples"]
    assert [e["value"] for e in examples.values()] == ["NO_COMMAND"]
    assert "application/json" in content
    header = schema["paths"]["/esp32/wifi/command"]["get"]["parameters"][0]
    assert (header["in"], header["name"], header["required"]) == ("header", "Device-ID", True)


def test_device_bodies_carry_the_protocol_examples(schema):
    confirm = schema["paths"]["/esp32/confirm"]["post"]
    body_examples = confirm["requestBody"]["content"]["application/json"]["examples"]
    values = [e["value"] for e in body_examples.values()]
    assert {"device_id": "6C:C8:40:4F:E0:3C", "slot": 3, "success": True}.items() <= values[
        0
    ].items()
    poll = schema["paths"]["/esp32/commands/{device_id}"]["get"]["responses"]["200"]
    poll_values = [e["value"] for e in poll["content"]["application/json"]["examples"].values()]
    assert None in poll_values
    assert any(v and v["command"] == "VEND" for v in poll_values)
    assert confirm.get("security", [{}]) == [{}]  # the firmware sends no credentials


def test_errors_are_documented_as_detail_and_code(schema):
    vend = op(schema, "/api/v1/vend/{slot_id}", "post")
    assert set(component(schema, vend, 409)["required"]) == {"detail", "code"}


def test_the_auth_schemes_are_declared(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["jwtAuth"]["scheme"] == "bearer"
    assert schemes["cookieAuth"]["in"] == "cookie"
    assert schemes["ApiKeyAuth"] == {
        **schemes["ApiKeyAuth"],
        "in": "header",
        "name": "Authorization",
    }
    vend_security = op(schema, "/api/v1/vend/{slot_id}", "post")["security"]
    assert {"jwtAuth": []} in vend_security
    assert {"ApiKeyAuth": []} in vend_security


def test_the_schema_endpoint_is_public(client, db):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert b"openapi:" in response.content


def test_swagger_ui_uses_only_local_assets_and_they_are_served(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets += re.findall(r"(?:src|href)=\'([^\']+)\'", html)
    assert assets, html[:500]
    remote = [a for a in assets if re.match(r"^(https?:)?//", a)]
    assert remote == []
    assert re.search(r"https?://(?!testserver)", html) is None, "no CDN URL anywhere in the page"
    static = [a for a in assets if a.startswith("/static/")]
    assert any("swagger-ui" in a for a in static)
    for asset in static:
        assert client.get(asset).status_code == 200, asset


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.system
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not installed at {CHROMIUM}")
@pytest.mark.django_db(transaction=True)
def test_swagger_ui_renders_in_a_browser_that_can_reach_only_the_server(monkeypatch):
    """The real server, headless Chromium, and every non-loopback request refused: the page
    must still render the device operations (nothing comes from a CDN)."""
    from playwright.sync_api import sync_playwright

    from tests.scratch.children import start_command, stop
    from tests.scratch.net import free_port, wait_http

    port = free_port()
    server = start_command("serve", "--host", "127.0.0.1", "--port", str(port))
    outside: list[str] = []

    def only_loopback(route):
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=server)
        # Playwright's sync API leaves an event loop marked running in this thread.
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(10_000)
                page.route("**/*", only_loopback)
                # A script or style the Content-Security-Policy refuses is a console error.
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"http://127.0.0.1:{port}/api/docs/")
                page.get_by_text("/esp32/wifi/command", exact=True).first.wait_for()
                assert page.get_by_text("/esp32/commands/{device_id}", exact=True).count() >= 1
                assert errors == []
            finally:
                browser.close()
    finally:
        stop(server)
    assert outside == []


# --- Found by the schemathesis run (tests/fuzz/): what the schema promised and did not hold -


def response(schema, operation, status) -> dict:
    """An operation's answer for ``status``, through its reference to a shared response."""
    answer = operation["responses"][str(status)]
    if "$ref" in answer:
        answer = schema["components"]["responses"][answer["$ref"].rsplit("/", 1)[-1]]
    return answer


def component(schema, operation, status) -> dict:
    ref = response(schema, operation, status)["content"]["application/json"]["schema"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def test_a_400_carries_per_field_errors_only_when_a_body_field_was_refused(
    schema, staff, client_for
):
    vend = op(schema, "/api/v1/vend/{slot_id}", "post")
    assert set(component(schema, vend, 400)["required"]) == {"detail", "code"}
    body = client_for(staff).post("/api/v1/vend/0", {}, format="json").json()
    assert body["code"] == "invalid" and "errors" not in body  # a path value, not a field


def test_both_polls_document_the_404_for_an_unknown_non_esp32_id(schema, api_client, db):
    for path in ("/esp32/commands/{device_id}", "/esp32/wifi/command"):
        assert "404" in schema["paths"][path]["get"]["responses"], path
    response = api_client.get("/esp32/commands/favicon.ico")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_device"


def test_token_endpoints_document_their_refusals_and_their_real_answers(schema, staff, api_client):
    obtain = op(schema, "/api/v1/auth/token", "post")
    refresh = op(schema, "/api/v1/auth/token/refresh", "post")
    for operation in (obtain, refresh):
        assert {"200", "400", "401"} <= set(operation["responses"])
    assert set(component(schema, obtain, 200)["required"]) == {"access", "refresh"}
    assert set(component(schema, refresh, 200)["required"]) == {"access", "refresh"}

    pair = api_client.post(
        "/api/v1/auth/token/",
        {"username": staff.username, "password": "pw-for-tests-1"},
        format="json",
    )
    assert pair.status_code == 200 and set(pair.json()) == {"access", "refresh"}
    again = api_client.post(
        "/api/v1/auth/token/refresh/", {"refresh": pair.json()["refresh"]}, format="json"
    )
    assert again.status_code == 200 and set(again.json()) == {"access", "refresh"}
    wrong = api_client.post(
        "/api/v1/auth/token/", {"username": staff.username, "password": "no"}, format="json"
    )
    assert wrong.status_code == 401 and set(wrong.json()) == {"detail", "code"}
    missing = api_client.post("/api/v1/auth/token/refresh/", {}, format="json")
    assert missing.status_code == 400


def test_list_endpoints_document_their_refusals_and_stay_paginated(schema, staff, client_for):
    transactions = op(schema, "/api/v1/transactions", "get")
    assert {"200", "400", "401", "403"} <= set(transactions["responses"])
    assert component(schema, transactions, 200)["required"] == ["count", "results"]
    for path in ("/api/v1/devices", "/esp32/devices/list"):
        assert {"401", "403"} <= set(op(schema, path, "get")["responses"]), path
    response = client_for(staff).get("/api/v1/transactions/?state=null")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


# --- 429 and 503, and error answers declared once ---------------------------------------------


def view_class(path: str):
    """The DRF view class that serves a schema path (any value stands in for a parameter)."""
    # An {id} is a transaction's UUID or a product's number.
    for stand_in in ("6d1f7a9e-0c5b-4a53-9a43-2b8f1e0c7d11", "1"):
        try:
            return resolve(re.sub(r"\{[^}]+\}", "1", path.replace("{id}", stand_in))).func.cls
        except Resolver404:
            continue
    raise AssertionError(f"no view serves {path}")


SHARED_NAMES = {"429": "Throttled", "503": "Unavailable"}


def test_every_operation_documents_503_and_429_exactly_where_a_rate_limit_applies(schema):
    shared = schema["components"]["responses"]
    checked = 0
    for path, operations in schema["paths"].items():
        view = view_class(path)
        # DRF's throttles for the view, and the device views' per-address limit taken first.
        throttled = bool(view().get_throttles() or getattr(view, "early_throttle_classes", ()))
        for method, operation in operations.items():
            answers = operation["responses"]
            assert "503" in answers, f"{method} {path}"
            assert ("429" in answers) == throttled, f"{method} {path}"
            for status in ("429", "503"):
                if path == "/health" and status == "503":
                    continue  # its own: the failed checks, in the health body
                if status in answers:
                    shared_name = SHARED_NAMES[status]
                    assert answers[status] == {"$ref": f"#/components/responses/{shared_name}"}
            checked += 1
    assert checked == 59
    for name in ("Throttled", "Unavailable"):
        assert shared[name]["headers"]["Retry-After"]["schema"]["type"] == "integer"


def test_each_error_answer_is_declared_once_and_referenced_everywhere(schema):
    """No operation carries an error answer inline: each refers to the one in components."""
    shared = schema["components"]["responses"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) < 400 or (path == "/health" and status == "503"):
                    continue
                assert set(answer) == {"$ref"}, f"{method} {path} {status} is inline"
                assert answer["$ref"].rsplit("/", 1)[-1] in shared
    examples = {
        name: next(iter(answer["content"]["application/json"]["examples"].values()))["value"]
        for name, answer in shared.items()
    }
    assert examples["Throttled"]["code"] == "throttled"
    assert examples["Unavailable"]["code"] == "database_unavailable"


def test_a_real_throttled_vend_answers_as_documented_and_so_does_an_outage_body(
    schema, settings, online_device, client_for, user
):
    from vending_site.backends.outages import outage_body

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "openapi-throttle",
        }
    }
    settings.API_THROTTLE_VEND = "1/min"
    client = client_for(user)
    assert client.post("/api/v1/vend/1", {}, format="json").status_code == 202
    throttled = client.post("/api/v1/vend/1", {}, format="json")
    vend = op(schema, "/api/v1/vend/{slot_id}", "post")
    assert throttled.status_code == 429 and "429" in vend["responses"]
    assert int(throttled["Retry-After"]) > 0
    assert set(throttled.json()) == set(component(schema, vend, 429)["required"])
    # The 503 body is built in one place (tests/faults/ makes real outages answer it).
    listing = op(schema, "/api/v1/transactions", "get")
    assert set(outage_body("database")) == set(component(schema, listing, 503)["required"])
