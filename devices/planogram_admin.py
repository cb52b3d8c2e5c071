"""The device list's "Copy planogram from…" action: the machines selected get the planogram
of one machine chosen on an intermediate page (``inventory.planogram.copy_planogram``)."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.template.response import TemplateResponse

from inventory.planogram import copy_planogram
from vending_site.http.errors import DomainError

from .models import Device

COPY_PERMISSIONS = ("inventory.change_slot", "inventory.change_price")


class CopySourceForm(forms.Form):
    source = forms.ModelChoiceField(
        queryset=Device.objects.order_by("device_id"),
        label="Copy the planogram of",
        help_text="Product, capacity, PAR, low-stock threshold and price per slot number; "
        "never the quantity.",
    )


def copy_planogram_from(modeladmin, request: HttpRequest, queryset):
    """Ask for the source (first call), then copy it onto the selected machines."""
    targets = list(queryset.order_by("device_id"))
    form = CopySourceForm(request.POST if "apply" in request.POST else None)
    if form.is_bound and form.is_valid():
        source = form.cleaned_data["source"]
        targets = [target for target in targets if target.pk != source.pk]
        if not targets:
            modeladmin.message_user(
                request, "Select machines other than the one copied from.", messages.WARNING
            )
            return None
        try:
            results = copy_planogram(source_device=source, targets=targets, user=request.user)
        except DomainError as exc:
            modeladmin.message_user(request, exc.message, messages.ERROR)
            return None
        for result in results:
            text = (
                f"{result.device_id}: {len(result.copied)} slot(s) set from {source.device_id}"
                f" ({result.price_changes} price change(s) recorded)."
            )
            if result.skipped:
                numbers = ", ".join(str(n) for n in result.skipped)
                text += f" Skipped slot(s) {numbers}: this machine has no such slot."
            modeladmin.message_user(request, text, messages.SUCCESS)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Copy a planogram",
        "opts": modeladmin.model._meta,
        "targets": targets,
        "form": form,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        "action": "copy_planogram_from",
    }
    return TemplateResponse(request, "admin/devices/device/copy_planogram.html", context)
