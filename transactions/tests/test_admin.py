"""The transaction admin: read-only history, and staff settling unconfirmed vends."""

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from inventory.choices import MovementReason
from inventory.models import Slot
from transactions.choices import TransactionState
from transactions.delivery import claim_next_command
from transactions.lifecycle import transition
from transactions.models import IdempotencyKey, Transaction
from transactions.services import request_vend

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:transactions_transaction_changelist"


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def unconfirmed_vend(device, user, slot_number: int = 1) -> Transaction:
    """A vend delivered to the machine whose confirmation never came."""
    txn = request_vend(device=device, slot_number=slot_number, user=user)
    claim_next_command(device=device)
    txn = Transaction.objects.select_related("device", "slot").get(pk=txn.pk)
    return transition(txn, TransactionState.UNCONFIRMED)


def test_every_transaction_admin_page_loads_for_staff(staff_client, staff, online_device):
    txn = unconfirmed_vend(online_device, staff)
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    url = reverse(CHANGELIST)
    pages = [
        url,
        f"{url}?state__exact=unconfirmed",
        f"{url}?device__id__exact={online_device.pk}",
        f"{url}?{urlencode({'created_at__gte': str(midnight)})}",
        f"{url}?created_at__year={midnight.year}",
        f"{url}?q=Product",
        f"{url}?q={txn.pk}",
        reverse("admin:transactions_transaction_change", args=[txn.pk]),
    ]
    for page in pages:
        assert staff_client.get(page).status_code == 200, page


def test_the_change_page_shows_the_vend_and_its_events_read_only(
    staff_client, staff, online_device
):
    txn = unconfirmed_vend(online_device, staff)

    response = staff_client.get(reverse("admin:transactions_transaction_change", args=[txn.pk]))

    body = response.content.decode()
    assert "Product 1" in body
    (inline,) = response.context["inline_admin_formsets"]
    assert [form.instance.to_state for form in inline.formset.forms] == [
        "queued",
        "sent",
        "unconfirmed",
    ]
    assert 'name="_save"' not in body


def test_the_list_makes_unconfirmed_vends_stand_out(staff_client, staff, online_device):
    unconfirmed_vend(online_device, staff)

    body = staff_client.get(reverse(CHANGELIST)).content.decode()

    # A class, not a style attribute: the CSP refuses those, so the colour never showed.
    assert 'class="txn-state txn-state--unconfirmed"' in body
    assert "style=" not in body.split('id="result_list"')[1].split("</table>")[0]
    assert "admin_lists/changelist.css" in body
    stylesheet = finders.find("admin_lists/changelist.css")
    with open(stylesheet) as css:
        assert ".txn-state--unconfirmed { color: #c77c00; font-weight: bold; }" in css.read()
    assert "Unconfirmed (needs staff)" in body


def test_the_list_costs_the_same_queries_for_one_vend_or_many(staff_client, staff, online_device):
    def queries_for_list() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(reverse(CHANGELIST)).status_code == 200
        return len(captured)

    unconfirmed_vend(online_device, staff)
    with_one = queries_for_list()
    for number in (2, 3, 4):
        request_vend(device=online_device, slot_number=number, user=staff)

    assert queries_for_list() == with_one


def test_a_transaction_is_found_by_its_whole_id(staff_client, staff, online_device):
    txn = unconfirmed_vend(online_device, staff)
    request_vend(device=online_device, slot_number=2, user=staff)

    response = staff_client.get(reverse(CHANGELIST) + f"?q={txn.pk}")

    assert [found.pk for found in response.context["cl"].result_list] == [txn.pk]


def test_mark_dispensed_settles_unconfirmed_vends_and_leaves_others_alone(
    staff_client, staff, online_device
):
    unconfirmed = unconfirmed_vend(online_device, staff)
    queued = request_vend(device=online_device, slot_number=2, user=staff)

    response = staff_client.post(
        reverse(CHANGELIST),
        {"action": "mark_dispensed", "_selected_action": [unconfirmed.pk, queued.pk]},
    )

    assert response.status_code == 302
    unconfirmed.refresh_from_db()
    queued.refresh_from_db()
    assert unconfirmed.state == TransactionState.SUCCEEDED
    assert unconfirmed.events.last().actor == staff
    assert queued.state == TransactionState.QUEUED
    assert Slot.objects.get(device=online_device, number=1).quantity == 4  # the sale stands
    texts = messages_of(response)
    assert texts[0] == "1 unconfirmed vend(s) marked dispensed."
    assert texts[1].startswith(f"Skipped 1 vend(s) that are not unconfirmed: {queued.pk}")


def test_refund_fails_unconfirmed_vends_and_returns_the_unit(staff_client, staff, online_device):
    unconfirmed = unconfirmed_vend(online_device, staff)
    settled = unconfirmed_vend(online_device, staff, slot_number=3)
    transition(settled, TransactionState.SUCCEEDED)

    response = staff_client.post(
        reverse(CHANGELIST),
        {"action": "refund_not_dispensed", "_selected_action": [unconfirmed.pk, settled.pk]},
    )

    assert response.status_code == 302
    unconfirmed.refresh_from_db()
    settled.refresh_from_db()
    assert unconfirmed.state == TransactionState.FAILED
    assert settled.state == TransactionState.SUCCEEDED
    refund = unconfirmed.stock_movements.get(reason=MovementReason.REFUND)
    assert (refund.delta, refund.user) == (1, staff)
    assert Slot.objects.get(device=online_device, number=1).quantity == 5
    assert not settled.stock_movements.filter(reason=MovementReason.REFUND).exists()
    assert "1 unconfirmed vend(s) marked not dispensed and refunded." in messages_of(response)


def test_transactions_cannot_be_added_changed_or_deleted_in_the_admin(
    staff_client, staff, online_device
):
    txn = unconfirmed_vend(online_device, staff)
    change = reverse("admin:transactions_transaction_change", args=[txn.pk])

    assert staff_client.get(reverse("admin:transactions_transaction_add")).status_code == 403
    assert staff_client.post(change, {"state": "succeeded"}).status_code == 403
    delete = reverse("admin:transactions_transaction_delete", args=[txn.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    changelist = staff_client.get(reverse(CHANGELIST))
    actions = [name for name, _label in changelist.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in actions
    txn.refresh_from_db()
    assert txn.state == TransactionState.UNCONFIRMED


def test_idempotency_keys_are_not_in_the_admin():
    assert not admin.site.is_registered(IdempotencyKey)
