from rest_framework import serializers

from devices.models import MAX_SLOTS, Device

MAX_TEXT = 255


class DeviceRegistrationSerializer(serializers.Serializer):
    """Both register bodies: v2.1 (`/esp32/register`) and the documented variant."""

    device_id = serializers.CharField(max_length=64)
    ip_address = serializers.IPAddressField(required=False, allow_blank=True)
    status = serializers.CharField(required=False, allow_blank=True, max_length=50)
    slots_available = serializers.IntegerField(required=False, min_value=1, max_value=MAX_SLOTS)
    device_type = serializers.CharField(required=False, allow_blank=True, max_length=20)
    firmware_version = serializers.CharField(required=False, allow_blank=True, max_length=50)


class VendConfirmationSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64)
    slot = serializers.IntegerField(min_value=0, max_value=10_000)
    success = serializers.BooleanField(required=False, default=True)
    message = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    timestamp = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)

    @classmethod
    def plain(cls, body: dict) -> dict | None:
        """The validated data of a confirmation as the firmware sends it (known fields only,
        each of its plain JSON type and in range), read without making the serializer;
        ``None`` for any other body, which the fields then validate (they own every error and
        every conversion, such as ``"1"`` for a slot or ``"true"`` for success)."""
        if not body.keys() <= _CONFIRMATION_FIELDS or not {"device_id", "slot"} <= body.keys():
            return None
        device_id, slot = body["device_id"], body["slot"]
        if not (_plain_text(device_id, 64) and len(device_id) > 0 and _whole(slot, 10_000)):
            return None
        data = {"device_id": device_id, "slot": slot, "success": body.get("success", True)}
        if type(data["success"]) is not bool:
            return None
        if "message" in body:
            if not _plain_text(body["message"], 1000):
                return None
            data["message"] = body["message"]
        if "timestamp" in body:
            if not _whole(body["timestamp"], 2**63 - 1):
                return None
            data["timestamp"] = body["timestamp"]
        return data


_CONFIRMATION_FIELDS = frozenset({"device_id", "slot", "success", "message", "timestamp"})


def _plain_text(value, max_length: int) -> bool:
    """A string a CharField keeps as it is: no surrounding whitespace, no NUL, no surrogate."""
    return (
        type(value) is str
        and len(value) <= max_length
        and value.isprintable()
        and value == value.strip()
    )


def _whole(value, maximum: int) -> bool:
    return type(value) is int and 0 <= value <= maximum


class DeviceSerializer(serializers.ModelSerializer):
    online = serializers.BooleanField(source="is_online", read_only=True)
    slots = serializers.IntegerField(source="slot_count", read_only=True)
    admission = serializers.CharField(read_only=True)
    asks_from = serializers.IPAddressField(source="moved_to", read_only=True, allow_null=True)

    class Meta:
        model = Device
        fields = [
            "device_id",
            "name",
            "transport",
            "protocol",
            "ip_address",
            "serial_port",
            "mac_address",
            "firmware_version",
            "slots",
            "online",
            "is_active",
            "last_seen",
            "registered_at",
            "approved",
            "admission",
            "last_address",
            "bound_address",
            "asks_from",
        ]
        read_only_fields = fields


class DeviceSelectionSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64)


class AdmissionRequestSerializer(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=["approve", "revoke", "accept_move"],
        help_text="approve: may receive commands, bound to the address it asks from; revoke: "
        "no more commands (queued ones expire); accept_move: serve it from the address it "
        "asks from now.",
    )
    address = serializers.IPAddressField(
        required=False,
        help_text="The address you were shown (`asks_from`): with it, the action is refused "
        "(409 `address_changed`) when the machine asks from another address by now.",
    )


class CommandRequestSerializer(serializers.Serializer):
    command = serializers.ChoiceField(choices=["STATUS", "RESET"])
