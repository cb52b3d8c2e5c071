"""The documented production environment passes Django's deployment checks with no warning."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "production.env.example"


def example_environment() -> dict[str, str]:
    values = {}
    for line in EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def run_deploy_check(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess:
    # Only what the example says (plus a private DATA_DIR for the generated key): nothing of
    # this shell's or CI's environment may make the check pass.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    env.update(example_environment(), DATA_DIR=str(tmp_path), **overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_nothing_for_the_documented_production_env(tmp_path):
    result = run_deploy_check(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_when_https_settings_are_left_out(tmp_path):
    # The check above can fail: without the HTTPS settings Django warns.
    result = run_deploy_check(tmp_path, SECURE_SSL_REDIRECT="False", SECURE_HSTS_SECONDS="0")
    assert result.returncode != 0
    assert "security.W008" in result.stderr + result.stdout
    assert "security.W004" in result.stderr + result.stdout


def test_listed_host_names_still_let_health_checks_call_the_loopback_address(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    env.update(example_environment(), DATA_DIR=str(tmp_path), ALLOWED_HOSTS="vending.example.com")
    probe = (
        "import django; django.setup(); from django.conf import settings; "
        "print(' '.join(settings.ALLOWED_HOSTS))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "vending_site.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["vending.example.com", "127.0.0.1", "localhost", "[::1]"]
