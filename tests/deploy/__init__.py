import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_prod_local():
    """``deploy/prod_local.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("prod_local", ROOT / "deploy" / "prod_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
