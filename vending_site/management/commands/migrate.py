"""``manage.py migrate``: Django's, without the request-sized statement timeout.

``DATABASE_STATEMENT_TIMEOUT`` (10 s) protects requests from a database that stops
answering; a migration that rewrites a large table or builds an index may rightly take
longer, and cutting it off halfway would leave an operator with a failed upgrade.
"""

from django.core.management.commands.migrate import Command as DjangoMigrate

from vending_site.backends.database import statements_unbounded


class Command(DjangoMigrate):
    def handle(self, *args, **options):
        with statements_unbounded(options["database"]):
            return super().handle(*args, **options)
