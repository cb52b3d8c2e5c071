"""What the machines' registry tells the layers above it, which it does not import.

A machine's approval decides whether it may be handed vends; the vends themselves are the
``transactions`` app's, which connects its receivers in ``TransactionsConfig.ready``.
"""

from django.dispatch import Signal

# Sent inside the database transaction that revokes the approval of machines, with
# ``device_pks`` (a list of primary keys). Receivers act in that transaction, so a failure
# rolls the revocation back with them: transactions expires the machines' queued commands,
# returning their reserved units, so nothing waiting is delivered later.
approval_revoked = Signal()
