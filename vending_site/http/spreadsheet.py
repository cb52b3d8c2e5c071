"""Cells for files a person opens in a spreadsheet (CSV, XLSX exports).

Text that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula, so a name or note typed by one user
could run in the sheet of another who exports it (formula injection, OWASP "CSV
Injection"). :func:`safe_cell` makes such text plain text by prefixing ``'``.

django-import-export's own ``IMPORT_EXPORT_ESCAPE_FORMULAE_ON_EXPORT`` (4.4) is not used:
it strips only a leading ``=`` and turns every cell, numbers included, into text.
"""

from numbers import Number

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value`` as a cell that cannot be a formula: text that a spreadsheet would read as
    one gets a leading ``'``; numbers (negative ones too), dates, ``None`` and other text
    are returned as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeExportMixin:
    """For a django-import-export resource: every exported text cell goes through
    :func:`safe_cell`. A field whose value is a number stays as the widget renders it
    (CSV renders ``-3`` as text, and it must stay ``-3``)."""

    def export_field(self, field, instance, **kwargs):
        cell = super().export_field(field, instance, **kwargs)
        if isinstance(cell, str) and not isinstance(field.get_value(instance), Number):
            return safe_cell(cell)
        return cell
