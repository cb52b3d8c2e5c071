"""The pick list's JSON body, for the OpenAPI schema (``inventory.picklist.as_dict`` builds
the body itself; these serializers describe it)."""

from rest_framework import serializers

_FORECAST = "Null without `visit`."


class PickSlotSerializer(serializers.Serializer):
    slot = serializers.IntegerField()
    product = serializers.CharField()
    sku = serializers.CharField()
    quantity = serializers.IntegerField(help_text="Units in the slot now.")
    capacity = serializers.IntegerField()
    fill_to = serializers.IntegerField(help_text="The PAR, else the capacity.")
    to_load = serializers.IntegerField(
        help_text="Units to load: `fill_to - quantity`; with `visit`, `fill_to - at_visit`. "
        "Never below 0."
    )
    sold_28d = serializers.IntegerField(
        allow_null=True,
        help_text="Net units sold (vends less refunds) over the 28 days before today. " + _FORECAST,
    )
    daily_average = serializers.FloatField(
        allow_null=True, help_text="`sold_28d / 28`. " + _FORECAST
    )
    expected_by_visit = serializers.FloatField(
        allow_null=True, help_text="`daily_average` x days until the visit. " + _FORECAST
    )
    at_visit = serializers.IntegerField(
        allow_null=True,
        help_text="`quantity` less `expected_by_visit` rounded up, at least 0. " + _FORECAST,
    )


class PickMachineSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    name = serializers.CharField()
    location = serializers.CharField(help_text="The location's name, empty when none.")
    stop = serializers.IntegerField(
        allow_null=True, help_text="The location's place on the route (`route=` only)."
    )
    to_load = serializers.IntegerField()
    slots = PickSlotSerializer(many=True)


class ProductTotalSerializer(serializers.Serializer):
    product = serializers.CharField()
    sku = serializers.CharField()
    slots = serializers.IntegerField(help_text="Slots on the list holding the product.")
    to_load = serializers.IntegerField(help_text="Units of the product the van carries.")
    expected_by_visit = serializers.FloatField(allow_null=True, help_text=_FORECAST)


class SalesWindowSerializer(serializers.Serializer):
    from_ = serializers.DateField()
    to = serializers.DateField()

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields


class PickListSerializer(serializers.Serializer):
    today = serializers.DateField(help_text="Today in the server's time zone.")
    visit = serializers.DateField(allow_null=True)
    days_until_visit = serializers.IntegerField(allow_null=True)
    sales_window = SalesWindowSerializer(
        allow_null=True, help_text="The days the sales average is taken over. " + _FORECAST
    )
    to_load = serializers.IntegerField(help_text="All units to load.")
    totals = ProductTotalSerializer(many=True, help_text="Per product, for the van.")
    machines = PickMachineSerializer(many=True)
