from vending_site.http.errors import DomainError, InvalidRequest, NotFound


class UnknownDevice(NotFound):
    code = "unknown_device"


class DeviceOffline(DomainError):
    code = "device_offline"


class NoActiveDevice(DomainError):
    code = "no_active_device"


class CommandNotSupported(DomainError):
    code = "command_not_supported"


class BadDeviceId(InvalidRequest):
    code = "invalid_device_id"
