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


class DeviceSerializer(serializers.ModelSerializer):
    online = serializers.BooleanField(source="is_online", read_only=True)
    slots = serializers.IntegerField(source="slot_count", read_only=True)

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
        ]
        read_only_fields = fields


class DeviceSelectionSerializer(serializers.Serializer):
    device_id = serializers.CharField(max_length=64)


class CommandRequestSerializer(serializers.Serializer):
    command = serializers.ChoiceField(choices=["STATUS", "RESET"])
