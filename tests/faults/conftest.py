"""Tests marked ``postgres`` run only when the suite itself runs on PostgreSQL."""

import pytest
from django.conf import settings


def pytest_collection_modifyitems(config, items):
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL=postgres://...)")
    for item in items:
        if "postgres" in item.keywords and "tests/faults" in str(item.fspath):
            item.add_marker(skip)
