"""Browser tests: the real server as a subprocess, driven by headless Chromium through Playwright.

Playwright cannot download its own browser here, so the tests drive Debian's ``chromium`` at
CHROMIUM (``.ci/run`` installs it). Without it every browser test is skipped with that reason.

Playwright's sync API keeps an asyncio event loop marked as running in the test's thread
between calls, so Django's async-safety guard would refuse every ORM call a test (or
pytest-django's database setup and flush) makes while the browser is open. DJANGO_ALLOW_ASYNC_UNSAFE
is therefore set for as long as Playwright runs, and only then: it is removed when the last
browser test is done, and never passed to the server under test, whose guard must stay on.
"""

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import global_settings
from django.contrib.auth import get_user_model
from django.utils.module_loading import import_string
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from tests.scratch import ROOT
from tests.scratch.children import start_server, stop
from tests.scratch.net import free_port, wait_http

CHROMIUM = Path("/usr/bin/chromium")
NO_CHROMIUM = f"Chromium not installed at {CHROMIUM}: browser tests skipped"
SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
# Headless, unprivileged, and silent: without the networking flags Chromium tries to reach
# update, sync and safe-browsing services, and this machine only allows loopback traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Playwright's default is 30 s; a page on loopback that needs more than this is a failure.
TIMEOUT_MS = 10_000
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


class ConsoleErrors(list):
    """Console errors and uncaught exceptions one page reported, in order."""

    def assert_clean(self) -> None:
        if self:
            listed = "\n".join(f"  {entry}" for entry in self)
            raise AssertionError(f"the page reported {len(self)} error(s):\n{listed}")


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless Chromium for all browser tests (each test gets a fresh context).

    ``launch()`` gives Chromium a new temporary user-data-dir and deletes it on close, so no
    profile, cookie or cache survives from one run to the next.
    """
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ASYNC_UNSAFE, "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield browser
            finally:
                browser.close()


@pytest.fixture
def console_errors() -> ConsoleErrors:
    return ConsoleErrors()


@pytest.fixture
def page(browser: Browser, console_errors: ConsoleErrors, request) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies from other tests).

    Console errors and uncaught exceptions are collected; the test fails if there are any
    once its body has run, unless it is marked ``allow_console_errors``.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        url = (message.location or {}).get("url", "")
        # Chromium asks every site for /favicon.ico on its own; its 404 is not the page's error.
        if message.type == "error" and urlsplit(url).path != "/favicon.ico":
            console_errors.append(f"console.error: {message.text} ({url or '?'})")

    def on_page_error(error: Error) -> None:
        console_errors.append(f"uncaught: {error.name}: {error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    request.node.stash[PAGE_KEY] = page
    try:
        yield page
    finally:
        context.close()


PAGE_KEY = pytest.StashKey[Page]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Fail a passing browser test whose page reported errors; keep a screenshot on failure."""
    page = item.stash.get(PAGE_KEY, None)
    try:
        result = yield
        errors = item.funcargs.get("console_errors")
        if errors is not None and not item.get_closest_marker("allow_console_errors"):
            errors.assert_clean()
        return result
    except BaseException:
        if page is not None and not page.is_closed():
            save_screenshot(page, f"FAILED-{item.name}")
        raise


def save_screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Write the page as NAME.png under SCREENSHOTS (kept after the run).

    SCREENSHOTS is test-artifacts/screenshots/ unless BROWSER_SCREENSHOTS names another folder.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture
def screenshot(page: Page):
    """``screenshot("name")`` saves the test's page under test-artifacts/screenshots/."""

    def take(name: str, *, full_page: bool = True) -> Path:
        return save_screenshot(page, name, full_page=full_page)

    return take


@pytest.fixture
def live_server_url(transactional_db) -> Iterator[str]:
    """The real server (``manage.py serve``) on a free loopback port, on the test database.

    Rows the test creates are committed (transactional_db), so the server sees them.
    """
    yield from serve(DASHBOARD_PUBLIC="false")


@pytest.fixture
def public_live_server_url(transactional_db) -> Iterator[str]:
    """As ``live_server_url``, with ``DASHBOARD_PUBLIC=true`` (anyone may watch, read-only)."""
    yield from serve(DASHBOARD_PUBLIC="true")


def serve(**env: str) -> Iterator[str]:
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        # The server must keep Django's async-safety guard: it is what the tests exercise.
        patch.delenv(ASYNC_UNSAFE, raising=False)
        server = start_server(port, **env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health")
        yield url
    finally:
        code, output = stop(server)
    assert code == 0, f"the server exited with {code}:\n{output}"
    assert "Traceback" not in output, f"the server logged an error:\n{output}"


STAFF_PASSWORD = "browser-staff-password-1"


@functools.cache
def server_password_hash() -> str:
    """``STAFF_PASSWORD`` hashed as the server process checks it.

    The root conftest makes tests hash with fast MD5, which the server does not accept: it
    checks passwords with the production hashers (PBKDF2, a third of a second a hash here).
    The hash is made once per run; every account a browser test signs in with gets it.
    """
    hasher = import_string(global_settings.PASSWORD_HASHERS[0])()
    return hasher.encode(STAFF_PASSWORD, hasher.salt())


def with_server_password(user):
    """Give ``user`` the password ``STAFF_PASSWORD``, as the server checks it; saved."""
    user.password = server_password_hash()
    user.save(update_fields=["password"])
    return user


@pytest.fixture
def staff_user(transactional_db):
    """A staff superuser the server can authenticate (password ``STAFF_PASSWORD``)."""
    return with_server_password(
        get_user_model().objects.create_user("operator", is_staff=True, is_superuser=True)
    )


def log_in(page: Page, base_url: str, username: str, password: str, next_path: str = "/admin/"):
    """Sign in through the admin's real login form, then land on ``next_path``."""
    page.goto(f"{base_url}/admin/login/?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}{next_path}")
