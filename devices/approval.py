"""Staff decisions about machines: approve, revoke, accept a machine's new address.

The checks these decisions feed (who is admitted, from which address) are
:mod:`devices.access`; what a revocation does to vends still queued is the vend layer's
(``transactions.commands``, on :data:`devices.signals.approval_revoked`).
"""

from django.db import transaction
from django.utils import timezone

from inventory.services import ensure_slots
from vending_site.http.errors import DomainError

from . import poll_cache
from .access import canonical_ip
from .models import Device
from .services import activate_if_none_active, publish_device
from .signals import approval_revoked


class AddressChanged(DomainError):
    code = "address_changed"


def set_approved(*, devices, approved: bool, expected_address: str | None = None) -> int:
    """Approve or revoke ``devices`` (a queryset).

    Approving binds each WiFi machine to the address that asks for it (shown to staff as
    *asks from*; it stays put while its sender keeps asking), or keeps the address it was
    bound to before a revoke; it creates its slots and makes it the active machine when none
    is. With ``expected_address`` (the address staff were shown), a machine asking from
    another one by now is refused with :class:`AddressChanged`. Revoking keeps the binding
    (nobody else may settle a vend it still has in hand) and expires its queued commands,
    returning any reserved unit, so nothing waiting is delivered later (the vend layer does
    that, on :data:`devices.signals.approval_revoked`)."""
    # The ids first: ``devices`` may be filtered on ``approved`` itself (the admin's list
    # filter), and would match nothing once updated.
    pks = list(devices.values_list("pk", flat=True))
    now = timezone.now()
    with transaction.atomic():
        rows = Device.objects.filter(pk__in=pks)
        if approved:
            changed = 0
            # An approved machine stays as it is: approving it again must not bind it to
            # whatever address last asked to act as it (that is accept_move, a choice).
            for device in rows.filter(approved=False).select_for_update():
                asks_from = canonical_ip(device.moved_to or device.last_address)
                if expected_address is not None and asks_from != canonical_ip(expected_address):
                    raise AddressChanged(
                        f"{device.device_id} now asks from {asks_from or 'no address'}, not "
                        f"{expected_address}; look again before approving it.",
                        device_id=device.device_id,
                    )
                device.approved, device.approved_at = True, now
                if not device.bound_address:
                    device.bound_address = asks_from
                device.moved_to, device.moved_at = None, None
                device.save(
                    update_fields=[
                        "approved",
                        "approved_at",
                        "bound_address",
                        "moved_to",
                        "moved_at",
                    ]
                )
                ensure_slots(device=device, count=device.slot_count)
                activate_if_none_active(device)
                publish_device(device)
                changed += 1
        else:
            changed = rows.update(approved=False)
            poll_cache.notify(rows.values_list("device_id", flat=True))
            approval_revoked.send(sender=Device, device_pks=pks)
            for device in rows:
                publish_device(device)
    return changed


def accept_move(*, devices, expected_address: str | None = None) -> int:
    """Bind each of ``devices`` that asks from a new address to that address (with
    ``expected_address``: only to that one, the address staff were shown)."""
    asking = devices.filter(moved_to__isnull=False)
    if expected_address is not None:
        asking = asking.filter(moved_to=canonical_ip(expected_address))
    moved = list(asking.values_list("pk", "moved_to"))
    with transaction.atomic():
        for pk, address in moved:
            Device.objects.filter(pk=pk, moved_to=address).update(
                bound_address=address, last_address=address, moved_to=None, moved_at=None
            )
        for device in Device.objects.filter(pk__in=[pk for pk, _address in moved]):
            publish_device(device)
            poll_cache.notify([device.device_id])
    return len(moved)


def accept_address(*, device, expected_address: str | None = None) -> None:
    """Serve ``device`` from the address it asks from (``expected_address``: the one staff
    were shown); :class:`AddressChanged` when it asks from none, or from another by now."""
    if not accept_move(
        devices=Device.objects.filter(pk=device.pk), expected_address=expected_address
    ):
        raise AddressChanged(
            f"{device.device_id} does not ask from {expected_address or 'a new address'} "
            "(any more); nothing to accept.",
            device_id=device.device_id,
        )
