"""`manage.py bootstrap`: the first-run setup `make run` performs."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Sum

from devices.models import Device
from inventory.demo import DEMO_DEVICE_ID
from inventory.models import Slot

pytestmark = pytest.mark.django_db


def run_bootstrap(*args) -> str:
    out = StringIO()
    call_command("bootstrap", *args, stdout=out)
    return out.getvalue()


def test_first_run_creates_a_staff_user_with_a_printed_random_password(settings, tmp_path):
    settings.ADMIN_PASSWORD = ""
    settings.DATA_DIR = tmp_path

    output = run_bootstrap()

    user = get_user_model().objects.get(username="admin")
    saved = (tmp_path / "admin-password.txt").read_text().strip()
    assert user.is_staff and user.is_superuser
    assert user.check_password(saved)
    assert saved in output


def test_admin_password_from_the_environment_is_applied_on_every_start(settings):
    settings.ADMIN_PASSWORD = "first-password-1"
    run_bootstrap()
    settings.ADMIN_PASSWORD = "second-password-2"

    output = run_bootstrap()

    assert get_user_model().objects.get(username="admin").check_password("second-password-2")
    assert "second-password-2" not in output


def test_demo_machine_is_loaded_into_an_empty_database_once(settings):
    settings.ADMIN_PASSWORD = "pw-for-tests-1"

    run_bootstrap()
    run_bootstrap()

    device = Device.objects.get(device_id=DEMO_DEVICE_ID)
    assert Device.objects.count() == 1
    assert device.is_active
    slots = Slot.objects.filter(device=device)
    assert slots.count() == 5
    assert all(slot.product_id for slot in slots)
    # Demo stock is in the ledger like any other stock.
    for slot in slots:
        assert slot.quantity == (slot.movements.aggregate(total=Sum("delta"))["total"] or 0)


def test_no_demo_flag_and_existing_data_both_skip_the_demo(settings):
    settings.ADMIN_PASSWORD = "pw-for-tests-1"

    run_bootstrap("--no-demo")

    assert not Device.objects.exists()
