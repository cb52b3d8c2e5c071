import importlib.util
import json
from pathlib import Path

from tests.scratch.children import run_python

ROOT = Path(__file__).resolve().parents[2]
WEB_SERVER = ROOT / "deploy" / "web.py"


def _load_script(name: str, path: Path):
    """A script of ``deploy/`` (not a package) as a module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_prod_local():
    """``deploy/prod_local.py`` as a module."""
    return _load_script("prod_local", ROOT / "deploy" / "prod_local.py")


def load_web():
    """``deploy/web.py`` (a script, not a package) as a module: its ``parse``, ``build``,
    ``STOP_TIMEOUT``. Importing it loads neither Django nor granian."""
    return _load_script("deploy_web", WEB_SERVER)


# Run in a child: deploy/web.py's main() with the launcher's arguments, everything it does
# (parse, the environment it sets, the settings, build, granian's own checks of its options
# in serve()) up to the point where granian would bind the port and fork the workers; there
# the WSGI application is loaded the way a worker loads it, and what the server was given is
# printed as one JSON line.
_DRY_RUN = """
import importlib.util, json, sys
from granian import Granian

def instead_of_serving(server, spawn_target, target_loader):
    from django.conf import settings
    application = target_loader()
    print(json.dumps({
        "address": server.bind_addr,
        "port": server.bind_port,
        "target": server.target,
        "interface": str(server.interface.value),
        "workers": server.workers,
        "threads": server.blocking_threads,
        "kill_timeout": server.workers_kill_timeout,
        "respawn": server.respawn_failed_workers,
        "max_rss": server.workers_rss,
        "idle_ms": server.http1_settings.header_read_timeout,
        "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE", 0),
        "conn_health_checks": settings.DATABASES["default"].get("CONN_HEALTH_CHECKS", False),
        "application": f"{type(application).__module__}.{type(application).__qualname__}",
    }))

Granian._serve = instead_of_serving
spec = importlib.util.spec_from_file_location("deploy_web", sys.argv[1])
web = importlib.util.module_from_spec(spec)
spec.loader.exec_module(web)
web.main(sys.argv[2:])
"""


def dry_run_web(args: list[str], env: dict[str, str], script: Path = WEB_SERVER) -> dict:
    """``deploy/web.py ARGS`` (or another ``script``) run in a child up to serving (see
    ``_DRY_RUN``): what granian would serve with. Fails with the child's stderr when it exits
    non-zero."""
    out = run_python(["-c", _DRY_RUN, str(script), *args], env)
    return json.loads(out.strip().splitlines()[-1])
