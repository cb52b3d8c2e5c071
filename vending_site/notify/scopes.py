"""The tags a channel may narrow its events to, with the choices staff pick from.

Events carry tags (``rule``, ``location``, ``route``, ``device``; see ``events.emit``). The
endpoint admin offers a list of choices for each tag below, filled by the app that knows them
(devices registers locations and routes, the alerts their rules) from its ``AppConfig.ready``:
this package imports no app.
"""

from collections.abc import Callable

# Tag → how the admin names the list.
SCOPES: dict[str, str] = {
    "rule": "Alert rules",
    "location": "Locations",
    "route": "Routes",
}

Choices = Callable[[], list[tuple[str, str]]]
_choices: dict[str, Choices] = {}


def register_scope_choices(tag: str, choices: Choices) -> None:
    """``choices()`` returns ``(value, label)`` pairs for ``tag``; read each time a form is
    built, so a new location shows without a restart."""
    if tag not in SCOPES:
        raise ValueError(f"unknown scope {tag!r}")
    _choices[tag] = choices


def choices_for(tag: str) -> list[tuple[str, str]]:
    reader = _choices.get(tag)
    return reader() if reader is not None else []
