"""Fixtures shared by every test module."""

import os
import uuid
from pathlib import Path

import pytest
from django.utils import timezone
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient

from tests.factories import DeviceFactory, ProductFactory, SlotFactory, UserFactory

# Property tests assert what is true, not how fast: hypothesis's default 200 ms deadline per
# example failed them on a loaded two-core machine (speed targets live in bench/).
hypothesis_settings.register_profile("vending", deadline=None)
hypothesis_settings.load_profile("vending")

# The system tier (docs/development.md, "Test tiers"): these suites start servers, bridges,
# nginx, Chromium or PostgreSQL clusters, or drive the whole stack (the fuzzer). CI runs them
# once, on PostgreSQL; everything else is the fast tier and runs on both databases. A test
# elsewhere that starts processes says so itself with @pytest.mark.system.
SYSTEM_SUITES = {"integration", "browser", "deploy", "faults", "fuzz"}
ROOT = Path(__file__).resolve().parent

# Under pytest-xdist (CI runs `-n 2 --dist loadfile`: a file's tests stay on one worker, so a
# server its module fixture starts is started once) each worker gets Redis databases of its
# own where a suite flushes a fixed one: the scratch stack's (9) and nginx's (13) move to 8
# on the second worker (SCRATCH_REDIS_URL; tests/test_throttling.py takes 4 + the worker).
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
if _WORKER:
    os.environ.setdefault("SCRATCH_REDIS_URL", f"redis://127.0.0.1:6379/{9 - _WORKER}")


# Under `-n 2 --dist loadfile` a worker is handed whole files in collection order and holds
# two at a time, so a long file collected near the end keeps one worker busy while the other
# has nothing left: the whole suite on PostgreSQL ended with a minute of one idle core. Under
# xdist, these files (25 s or more each in a busy PostgreSQL run, longest first) go first,
# then the rest of the system tier, then the fast tier's many short files, which even the two
# workers out at the end. tests/test_scheduling.py checks that every name here is a file.
LONG_FILES = (
    "tests/browser/test_dashboard_live_in_browser.py",
    "devices/tests/test_serial_bridge.py",
    "tests/fuzz/test_api_fuzz.py",
    "tests/browser/test_dashboard_roles_in_browser.py",
    "tests/faults/test_soak.py",
    "tests/integration/test_chunked_bodies.py",
    "tests/deploy/test_compose.py",
    "tests/integration/test_curl_walkthrough.py",
    "tests/integration/test_workers_sigkill.py",
    "tests/faults/test_backend_faults.py",
    "tests/test_roles_matrix.py",
    "tests/deploy/test_nginx_https.py",
)


def scheduling_rank(item: pytest.Item) -> tuple[int, int]:
    """Where ``item``'s file goes in an xdist run: the long files, the system tier, the rest."""
    path = item.path.relative_to(ROOT).as_posix()
    long_rank = LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)
    return long_rank, 0 if item.get_closest_marker("system") else 1


def pytest_configure(config):
    # pytest-xdist (3.x) hands out the files of `--dist loadfile` by how many tests each has,
    # most first, unless told to keep the collection order: that put the one-test files,
    # the longest of the system tier, at the very end, one worker on them while the other
    # sat idle. The collection order is the one below, so xdist must keep it.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.relative_to(ROOT).parts
        if len(parts) > 2 and parts[0] == "tests" and parts[1] in SYSTEM_SUITES:
            item.add_marker(pytest.mark.system)
    # Only under xdist: a run in one process keeps pytest-django's order (database tests
    # before transactional ones). The sort is stable: a file's own tests keep their order.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=scheduling_rank)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Tests log users in often; production hashing would make that the slowest thing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def throttle_counts_start_at_zero(settings):
    """Throttle counts and the communication log's budget live in the default cache, which
    in process memory would outlive the test: AUTH_THROTTLE (10/min per address) would refuse
    the eleventh token request of a whole run. Each test gets its own cache (a Redis cache,
    configured by REDIS_URL, is kept: its tests use their own key prefixes)."""
    if settings.CACHES["default"]["BACKEND"].endswith("LocMemCache"):
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "LOCATION": f"test-{uuid.uuid4()}",
            }
        }


@pytest.fixture(autouse=True)
def no_poll_answers_kept_from_another_test():
    """What a process keeps about machines (devices/poll_cache.py) and the throttle counts
    of polls answered from memory (vending_site/http/deferred_throttle.py) would outlive the
    test's database and cache: each test starts with nothing kept."""
    from devices import poll_cache
    from vending_site.http.deferred_throttle import windows

    poll_cache.forget_all()
    windows.forget()
    yield
    poll_cache.forget_all()
    windows.forget()


@pytest.fixture(autouse=True)
def no_shed_polls_seen_by_another_test(monkeypatch):
    """The *Polls shed* alert reads the shed-poll counter of every process sharing the metric
    files (vending_site/alerts/builtin.py): a test shedding polls in another xdist worker
    would open it in a test that evaluates the rules here. It reads 0 unless a test of it
    says otherwise, and starts with no earlier reading."""
    from vending_site.alerts import builtin

    builtin._shed_samples.clear()
    monkeypatch.setattr(builtin, "shed_total", lambda: 0.0)
    yield
    builtin._shed_samples.clear()


@pytest.fixture(autouse=True)
def last_seen_written_in_the_request(settings):
    """In-process tests run inside a transaction that a writer thread's own connection cannot
    see: there every refresh is written by its request (devices/presence.py has its tests).
    The servers that tests start as processes keep the default, the writer thread."""
    settings.DEVICE_SEEN_FLUSH_SECONDS = 0


@pytest.fixture(autouse=True)
def no_poll_cache_reconciler(settings):
    """Nor can the reconciler's thread (devices/poll_cache.py): in-process tests keep answers
    that expire one by one, as with it off, and a test of reconciliation runs it itself
    (test_poll_reconcile.py). The servers that tests start as processes keep the default."""
    settings.DEVICE_POLL_RECONCILE_SECONDS = 0


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def client_for():
    """An APIClient authenticated as the given user."""

    def make(user) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def online_device(db):
    """An online WiFi device (firmware v2.1) with five stocked slots; it is the active one."""
    device = DeviceFactory(device_id="ESP32_6CC8404FE03C", last_seen=timezone.now(), is_active=True)
    for number in range(1, 6):
        SlotFactory(
            device=device,
            number=number,
            product=ProductFactory(sku=f"SKU-{number}", name=f"Product {number}"),
            quantity=5,
            capacity=10,
        )
    return device
