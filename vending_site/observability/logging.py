"""Structured logs: one JSON object per line, from every logger in the process.

structlog is wired *through* the standard library (``ProcessorFormatter``), so Django's,
granian's, the libraries' and our own ``logging.getLogger(__name__)`` loggers all come out in
the same shape: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` plus whatever
is bound in the current context. Context travels in :mod:`contextvars` (``structlog.contextvars``):

- ``request_id`` is bound by :class:`vending_site.http.middleware.RequestIdMiddleware` for the
  whole request, and cleared after it;
- ``device_id`` is bound by the device endpoints, the serial bridge and the discovery responder;
- ``transaction_id`` is bound by ``transactions.lifecycle`` while a vend changes state.

contextvars are per thread and per asyncio task, and asgiref copies them into the thread that
runs a sync view, so a value bound for one request is never seen by another.

``LOG_FORMAT`` picks the renderer: ``json`` (the default) or ``console`` (coloured key=value
lines for a person at a terminal). JSON is the default everywhere, ``make run`` included:
the same stream is what systemd/Docker/a log shipper collects, and switching on "is stderr a
TTY" would not even fire under ``make run`` (honcho pipes its children's output). A
developer who prefers reading console lines sets ``LOG_FORMAT=console`` in ``.env``.
"""

from __future__ import annotations

import structlog

FORMATS = ("json", "console")

# Applied to records from plain stdlib loggers before rendering (structlog loggers run the
# same steps in their own chain, see configure_structlog()).
_SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _renderer(fmt: str):
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.JSONRenderer()


def make_formatter(fmt: str = "json") -> structlog.stdlib.ProcessorFormatter:
    """The ``logging.Formatter`` that renders every record as one line in ``fmt``."""
    final = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        # Tracebacks become a string field instead of extra, unparseable lines.
        final.append(structlog.processors.format_exc_info)
    final.append(_renderer(fmt))
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder(_SAFE_EXTRAS)],
        processors=final,
    )


# `extra=` keys copied from foreign records; Django's own extras (the request object) are not
# data and are left out.
_SAFE_EXTRAS = ("status_code", "device_id", "transaction_id")


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    return make_formatter("json")


def console_formatter() -> structlog.stdlib.ProcessorFormatter:
    return make_formatter("console")


def logging_config(*, fmt: str, level: str) -> dict:
    """The ``LOGGING`` dict for settings: one stderr handler with the chosen formatter."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "vending_site.observability.logging.json_formatter"},
            "console": {"()": "vending_site.observability.logging.console_formatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            # Daphne's and Twisted's own loggers go through the root handler like ours.
            "daphne": {"level": level},
        },
    }


def configure_structlog() -> None:
    """Make ``structlog.get_logger()`` loggers hand their events to stdlib logging."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str):
    return structlog.stdlib.get_logger(name)


def bind(**values) -> None:
    """Bind ``values`` (``None`` ones skipped) to every log line of the current context."""
    structlog.contextvars.bind_contextvars(
        **{key: value for key, value in values.items() if value not in (None, "")}
    )


bound = structlog.contextvars.bound_contextvars
clear = structlog.contextvars.clear_contextvars
unbind = structlog.contextvars.unbind_contextvars
__all__ = [
    "bind",
    "bound",
    "clear",
    "configure_structlog",
    "get_logger",
    "logging_config",
    "unbind",
]
