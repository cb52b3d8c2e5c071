"""The browser-test harness proved on the admin: the real server, a real login, real Chromium."""

import os
import subprocess
import sys
import textwrap

import pytest
from playwright.sync_api import expect

from devices.models import Location
from tests.browser.conftest import CHROMIUM, NO_CHROMIUM, STAFF_PASSWORD, log_in
from tests.factories import DeviceFactory
from tests.scratch import ROOT


def test_staff_log_in_through_the_admin_form_and_see_the_device_list(
    live_server_url, staff_user, page, screenshot
):
    DeviceFactory(
        device_id="ESP32_B20A5E7E5700",
        name="Lobby machine",
        location=Location.objects.create(name="North lobby"),
    )

    log_in(page, live_server_url, staff_user.username, STAFF_PASSWORD)
    # The admin index: the Devices model's link in the Devices app's table.
    page.locator("#devices-device").get_by_role("link", name="Devices").click()

    expect(page).to_have_url(f"{live_server_url}/admin/devices/device/")
    row = page.get_by_role("row").filter(has_text="ESP32_B20A5E7E5700")
    expect(row).to_contain_text("Lobby machine")
    expect(row).to_contain_text("North lobby")
    path = screenshot("admin-device-list")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_a_wrong_password_is_refused_by_the_login_form(live_server_url, staff_user, page):
    page.goto(f"{live_server_url}/admin/login/")
    page.get_by_label("Username").fill(staff_user.username)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()

    expect(page.locator(".errornote")).to_contain_text("correct username and password")
    expect(page).to_have_url(f"{live_server_url}/admin/login/")


@pytest.mark.allow_console_errors
def test_the_collector_records_uncaught_exceptions_and_console_errors(page, console_errors):
    page.set_content(
        "<script>console.error('logged on purpose')</script>"
        "<script>throw new Error('thrown on purpose')</script>"
    )

    assert any("logged on purpose" in entry for entry in console_errors), console_errors
    assert any("thrown on purpose" in entry for entry in console_errors), console_errors
    with pytest.raises(AssertionError, match="reported 2 error"):
        console_errors.assert_clean()


# Needs no browser of its own (the pytest it runs launches one), so it skips on the same condition.
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
def test_a_page_that_throws_fails_a_test_that_does_not_allow_it(tmp_path):
    """End to end: pytest, run on a test whose page throws, reports that test as failed."""
    test_file = tmp_path / "test_throwing_page.py"
    test_file.write_text(
        textwrap.dedent(
            """
            def test_throwing_page(page):
                page.set_content("<script>throw new Error('thrown on purpose')</script>")
            """
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "-p",
            "tests.browser.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            str(ROOT / "pyproject.toml"),
            "-q",
        ],
        cwd=ROOT,
        env={**os.environ, "BROWSER_SCREENSHOTS": str(tmp_path / "shots")},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed" in run.stdout, run.stdout
    assert "uncaught: Error: thrown on purpose" in run.stdout, run.stdout
    assert (tmp_path / "shots" / "FAILED-test_throwing_page.png").exists()
