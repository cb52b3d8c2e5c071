from vending_site.http.errors import DomainError, InvalidRequest, Unprocessable


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


class PlanogramInvalid(Unprocessable):
    """A slot's settings that cannot hold together (PAR above capacity, capacity below what
    the slot holds, a negative price)."""

    code = "planogram_invalid"


class RestockRefused(Unprocessable):
    """A restock with at least one fill that cannot be made; ``slots`` names each one."""

    code = "restock_refused"


class PlanogramCopyRefused(Unprocessable):
    """A planogram copy that cannot be made (a target slot holds more than the copied
    capacity, or holds units and would get another product); ``slots`` names each one per
    machine. Nothing is copied then."""

    code = "planogram_copy_refused"


class ProductInUse(DomainError):
    """A product that cannot be deleted: slots still hold it, or its price history is kept."""

    code = "product_in_use"


class ProductConflict(DomainError):
    """A product's SKU that another product already has."""

    code = "product_conflict"
