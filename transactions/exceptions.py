from vending_site.http.errors import DomainError, NotFound, Unprocessable


class InvalidTransition(DomainError):
    code = "invalid_transition"


class TransactionNotFound(NotFound):
    code = "transaction_not_found"


class IdempotencyKeyInUse(DomainError):
    """A request with the same key is still being processed."""

    code = "idempotency_key_in_use"


class IdempotencyKeyMismatch(Unprocessable):
    """The key was used before with a different request."""

    code = "idempotency_key_mismatch"
