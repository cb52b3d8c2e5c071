from vending_site.http.errors import DomainError, InvalidRequest


class OutOfStock(DomainError):
    code = "out_of_stock"


class CapacityExceeded(InvalidRequest):
    code = "capacity_exceeded"


class SlotDisabled(DomainError):
    code = "slot_disabled"


class SlotNotConfigured(DomainError):
    code = "slot_not_configured"


class SlotOutOfRange(InvalidRequest):
    code = "slot_out_of_range"
