"""Outbound messages: webhooks for integrators, e-mail and Apprise notifications for people.

An event (a vend settled, an alert opened) becomes one :class:`~vending_site.notify.models.Message`
and one :class:`~vending_site.notify.models.Delivery` per endpoint that subscribes to it, written
by :func:`vending_site.notify.events.emit` in the same database transaction as the change: the
outbox. The notifier process (``manage.py run_notifier``) sends the deliveries. Knows no app: the
apps call ``emit`` with plain data.
"""
