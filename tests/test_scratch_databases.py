"""The scratch stack's PostgreSQL housekeeping (tests/scratch/databases.py)."""

import pytest
from django.conf import settings

from tests.scratch.databases import admin_sql

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


@pytest.mark.skipif(not ON_POSTGRES, reason="the bound on waits is installed on PostgreSQL only")
def test_an_admin_statement_may_outlast_the_applications_bound_on_waits(settings):
    """A DROP DATABASE waits for a checkpoint and for the backends it ends: on a loaded CI
    machine that took over the application's bound (statement timeout plus a second), and
    the soak test's scratch database was left behind."""
    settings.DATABASE_STATEMENT_TIMEOUT = 1  # the application would give up after 2 s

    admin_sql("SELECT pg_sleep(2.5)")
