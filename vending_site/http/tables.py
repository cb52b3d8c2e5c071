"""Answers that are a table: JSON for DRF, or CSV when asked (``format=csv`` or
``Accept: text/csv``). Used by the sales report and the pick list."""

import csv
from collections.abc import Iterable

from django.http import HttpResponse
from rest_framework.negotiation import BaseContentNegotiation

from vending_site.http.errors import InvalidRequest


class JSONOnlyNegotiation(BaseContentNegotiation):
    """Always JSON for DRF (errors included); the view answers CSV itself, so that
    ``?format=csv`` is not a renderer DRF would refuse with a 404."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def wants_csv(request) -> bool:
    """CSV for ``format=csv`` or ``Accept: text/csv``; ``format`` must be json or csv."""
    wanted = request.GET.get("format")
    if wanted is not None:
        if wanted not in ("json", "csv"):
            raise InvalidRequest(f"format must be json or csv, not {wanted[:20]!r}.")
        return wanted == "csv"
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip() == "text/csv" for part in accept.split(","))


def csv_response(rows: Iterable[Iterable], filename: str) -> HttpResponse:
    """``rows`` (a header row first) as a CSV download named ``filename``."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    csv.writer(response, lineterminator="\r\n").writerows(rows)
    return response
