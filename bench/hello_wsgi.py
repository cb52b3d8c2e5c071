"""The ceiling of the production web server itself: ``deploy/web.py``'s granian, with the
same workers, threads and settings, serving a WSGI application that answers every request
with ``null`` (what an idle poll answers) and does nothing else.

    .venv/bin/python bench/hello_wsgi.py --bind 127.0.0.1:8001

``bench/poll_ceiling.py`` measures the project's idle poll against it: the ratio says how
much of the server's capacity Django and the poll's own work leave.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = b"null"
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]


def main(argv: list[str] | None = None) -> None:
    # deploy/ is a directory of scripts, not a package: its server module is loaded by path.
    sys.path.insert(0, str(ROOT / "deploy"))
    sys.path.insert(0, str(ROOT))
    import web  # deploy/web.py

    args = web.parse(argv)
    os.chdir(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    from django.conf import settings

    server = web.build(args, settings, target="bench.hello_wsgi:application")
    server.serve(target_loader=web.load_application)


if __name__ == "__main__":
    main()
