"""Alerts: conditions that need a person, from open to acknowledged to resolved.

The apps register their rules (a check that returns the subjects for which a condition holds
now); the notifier evaluates them periodically and keeps one alert per rule and subject while
the condition lasts. Knows no app: rules are registered by the apps' ``AppConfig.ready``.
"""
