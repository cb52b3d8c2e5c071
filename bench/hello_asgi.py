"""The ceiling of the embedded default's server itself: ``manage.py serve``'s granian (ASGI,
one worker, the same settings) serving an ASGI application that answers every HTTP request
with ``null`` (what an idle poll answers) and does nothing else.

    .venv/bin/python bench/hello_asgi.py --bind 127.0.0.1:5001

``bench/poll_ceiling.py`` measures the embedded default's idle poll against it.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = b"null"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4")],
}
END = {"type": "http.response.body", "body": BODY}


async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(START)
    await send(END)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vending_site.settings")
    from devices.management.commands import serve

    server = serve.build(
        host=host, port=int(port), access_log=os.devnull, target="bench.hello_asgi:application"
    )
    server.serve(target_loader=serve.load_application)


if __name__ == "__main__":
    main()
