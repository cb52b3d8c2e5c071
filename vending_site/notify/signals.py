"""Signals of the outbox, for whoever must react without being imported by it."""

from django.dispatch import Signal

# Sent (``send_robust``) after a delivery's last try failed and it was marked failed, outside
# any transaction; keyword arguments: ``delivery`` (with its message and endpoint). The alert
# rules may open an alert on it; beware of alerting through the endpoint that just failed.
delivery_failed = Signal()
