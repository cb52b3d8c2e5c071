"""``safe_cell``: text a spreadsheet would read as a formula becomes text; nothing else changes."""

from datetime import date
from decimal import Decimal

import pytest

from vending_site.http.spreadsheet import safe_cell


@pytest.mark.parametrize(
    "text", ["=1+2", '=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(1)", "\t=1", "\r=1"]
)
def test_text_that_starts_a_formula_gets_a_leading_quote(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["Cola", "", " =1", "1-2", "a=b", "'=1"])
def test_other_text_is_left_as_it_is(value):
    assert safe_cell(value) == value


@pytest.mark.parametrize("value", [-3, -1.5, Decimal("-0.50"), 0, date(2026, 1, 5), None, True])
def test_numbers_dates_and_none_are_not_text_and_stay_as_they_are(value):
    assert safe_cell(value) is value
