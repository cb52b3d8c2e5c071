"""Bodies of the fleet resources (locations, routes, machines): what is shown, and what a
write may send. Validation of the shape only; the rules are ``devices.fleet``'s."""

from rest_framework import serializers

from devices.models import Device, Location, Route

MAX_STOPS = 500
MAX_ID = 2**31 - 1


class LocationSerializer(serializers.ModelSerializer):
    """A location; ``machines`` (the device ids standing there) is read-only: a machine is
    moved by changing the machine."""

    latitude = serializers.DecimalField(
        max_digits=9,
        decimal_places=6,
        min_value=-90,
        max_value=90,
        allow_null=True,
        required=False,
        coerce_to_string=False,
        help_text="Degrees north (-90 to 90); given with longitude, or both null.",
    )
    longitude = serializers.DecimalField(
        max_digits=9,
        decimal_places=6,
        min_value=-180,
        max_value=180,
        allow_null=True,
        required=False,
        coerce_to_string=False,
        help_text="Degrees east (-180 to 180); given with latitude, or both null.",
    )
    machines = serializers.SerializerMethodField()

    class Meta:
        model = Location
        fields = [
            "id",
            "name",
            "address",
            "latitude",
            "longitude",
            "contact",
            "notes",
            "machines",
            "created_at",
        ]
        read_only_fields = ["id", "machines", "created_at"]

    def get_machines(self, location: Location) -> list[str]:
        return [machine.device_id for machine in location.machines.all()]


class StopsField(serializers.ListField):
    """A route's stops: read from its ``RouteStop`` rows, in position order."""

    def get_attribute(self, route: Route) -> list[int]:
        return [stop.location_id for stop in route.stops.all()]

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, dict):
                raise
            # Per-item errors as flat messages: every field's errors are a list of strings.
            raise serializers.ValidationError(
                [
                    f"Item {index}: {' '.join(map(str, errors))}"
                    for index, errors in exc.detail.items()
                ]
            ) from exc


class RouteSerializer(serializers.ModelSerializer):
    """A route: its driver (a user id, or null) and its stops, location ids in the order of
    visits. Sending ``stops`` replaces the whole order."""

    driver = serializers.IntegerField(
        source="driver_id",
        allow_null=True,
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="The user who drives it: a staff account holding the Driver or Operator "
        "role (422 otherwise), or null.",
    )
    driver_name = serializers.SerializerMethodField()
    stops = StopsField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        max_length=MAX_STOPS,
        help_text="Location ids in the order of visits; a location appears at most once.",
    )

    class Meta:
        model = Route
        fields = ["id", "name", "driver", "driver_name", "notes", "stops", "created_at"]
        read_only_fields = ["id", "driver_name", "created_at"]

    def get_driver_name(self, route: Route) -> str | None:
        return route.driver.get_username() if route.driver else None


class LocationRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Location
        fields = ["id", "name"]


class MachineSerializer(serializers.ModelSerializer):
    """A machine as the fleet sees it: where it stands and whether it answers."""

    location = LocationRefSerializer(read_only=True, allow_null=True)
    online = serializers.BooleanField(source="is_online", read_only=True)
    admission = serializers.CharField(read_only=True)

    class Meta:
        model = Device
        fields = ["device_id", "name", "location", "online", "admission", "last_seen", "slot_count"]
        read_only_fields = fields


class MachineUpdateSerializer(serializers.Serializer):
    """``PATCH`` a machine: its name and its location only."""

    name = serializers.CharField(max_length=100, allow_blank=True, required=False)
    location = serializers.IntegerField(
        allow_null=True,
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="A location id, or null: not placed anywhere.",
    )

    def validate_location(self, value: int | None) -> Location | None:
        if value is None:
            return None
        location = Location.objects.filter(pk=value).first()
        if location is None:
            raise serializers.ValidationError(f"No location {value} exists.")
        return location

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: ["Only name and location can be changed here."] for name in unknown}
            )
        return attrs
