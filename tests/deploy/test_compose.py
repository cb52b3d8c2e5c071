"""docker-compose.yml, the Dockerfile, nginx's configuration and the systemd units, checked by
construction (no Docker engine here): whatever they run must exist and accept its arguments,
whatever they set must be read by the settings, whatever they point at must be there.

Two kinds of commands run: ``python manage.py NAME ...`` (checked with the command's own
parser) and the production web server, ``python -m gunicorn --config deploy/gunicorn.conf.py
--bind ...`` (checked with gunicorn's own parser, and ``gunicorn --check-config``, which runs
the configuration file and loads the application)."""

import ast
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands, load_command_class
from django.urls import Resolver404, resolve

from tests.deploy import load_prod_local

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
# Names docker compose substitutes in ${NAME...} from its `.env`.
COMPOSE_VARIABLES = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_TEXT))
SERVICES = COMPOSE["services"]
OUR_IMAGE = sorted(name for name, service in SERVICES.items() if "build" in service)
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
# Read by Python or Django themselves, not by vending_site/settings.py.
PROCESS_VARIABLES = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "DJANGO_SETTINGS_MODULE"}


def settings_variables() -> set[str]:
    """Every NAME settings.py reads as ``env("NAME")`` / ``env.<cast>("NAME", ...)``."""
    tree = ast.parse((ROOT / "vending_site" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        is_env = (isinstance(func, ast.Name) and func.id == "env") or (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "env"
        )
        first = node.args[0]
        if is_env and isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
    return names


READ_BY_SETTINGS = settings_variables() | PROCESS_VARIABLES


def env_file_names(path: Path) -> set[str]:
    """Variable names assigned in an env file, commented-out suggestions included."""
    pattern = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=")
    return {m.group(1) for line in path.read_text().splitlines() if (m := pattern.match(line))}


def assert_manage_py_command(argv: list[str], where: str) -> None:
    """``argv`` is ``python manage.py NAME ARGS...`` with a real NAME whose parser takes ARGS."""
    assert Path(argv[0]).name.startswith("python"), f"{where}: {argv}"
    assert argv[1] in ("manage.py", str(ROOT / "manage.py")), f"{where}: {argv}"
    name, args = argv[2], argv[3:]
    commands = get_commands()
    assert name in commands, f"{where}: no management command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    parser.parse_args(args)  # CommandError on an unknown or malformed argument


GUNICORN_CONFIG = "deploy/gunicorn.conf.py"


def is_gunicorn(argv: list[str]) -> bool:
    return argv[1:3] == ["-m", "gunicorn"]


def assert_gunicorn_command(argv: list[str], where: str) -> None:
    """``argv`` is ``python -m gunicorn ARGS...``: gunicorn's own parser takes ARGS, the
    configuration is the project's one file and the address to bind is given."""
    from gunicorn.config import Config

    assert Path(argv[0]).name.startswith("python") and is_gunicorn(argv), f"{where}: {argv}"
    try:
        parsed = Config().parser().parse_args(argv[3:])
    except SystemExit as exc:  # argparse's way of refusing
        raise AssertionError(f"{where}: gunicorn refuses {argv[3:]}") from exc
    assert parsed.config == GUNICORN_CONFIG, f"{where}: not {GUNICORN_CONFIG}: {argv}"
    assert parsed.bind, f"{where}: no --bind"
    assert not parsed.args, f"{where}: the application comes from the configuration"


def assert_real_command(argv: list[str], where: str) -> None:
    if is_gunicorn(argv):
        assert_gunicorn_command(argv, where)
    else:
        assert_manage_py_command(argv, where)


def health_paths(text: str) -> list[str]:
    return re.findall(r"https?://[^/\s'\"]+(/[^\s'\"]*)", text)


def test_settings_variable_scan_finds_the_known_ones():
    # Guards the AST scan itself: if it found nothing, every check below would be vacuous.
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECURE_SSL_REDIRECT"} <= READ_BY_SETTINGS


def test_every_service_built_from_our_image_runs_a_real_command():
    assert {"web1", "web2", "ws", "discovery", "serial-bridge", "migrate"} <= set(OUR_IMAGE)
    for name in OUR_IMAGE:
        assert_real_command(SERVICES[name]["command"], f"service {name}")


def test_http_is_served_by_gunicorn_and_the_websocket_by_daphne():
    for name in ("web1", "web2"):
        assert is_gunicorn(SERVICES[name]["command"]), name
        assert SERVICES[name]["stop_grace_period"] == "25s"  # graceful_timeout 20 s, then KILL
    assert SERVICES["ws"]["command"][:3] == ["python", "manage.py", "serve"]


def test_a_bad_argument_is_caught_by_the_command_check():
    with pytest.raises(Exception, match=r"unrecognized arguments|invalid"):
        assert_manage_py_command(
            ["python", "manage.py", "serve", "--port", "8000", "--workers", "2"], "probe"
        )
    with pytest.raises(AssertionError, match="no management command"):
        assert_manage_py_command(["python", "manage.py", "runserver_plus"], "probe")
    good = ["python", "-m", "gunicorn", "--config", GUNICORN_CONFIG, "--bind", "0.0.0.0:8000"]
    assert_gunicorn_command(good, "probe")
    with pytest.raises(AssertionError, match="refuses"):
        assert_gunicorn_command([*good, "--workerz", "2"], "probe")
    with pytest.raises(AssertionError, match="no --bind"):
        assert_gunicorn_command(good[:5], "probe")
    with pytest.raises(AssertionError, match=r"not deploy/gunicorn\.conf\.py"):
        assert_gunicorn_command([*good[:4], "other.py", *good[5:]], "probe")


def test_every_variable_compose_sets_is_read_by_the_settings():
    for name in OUR_IMAGE:
        unread = set(SERVICES[name].get("environment", {})) - READ_BY_SETTINGS
        assert not unread, f"service {name} sets variables nothing reads: {sorted(unread)}"


@pytest.mark.parametrize(
    "path",
    ["deploy/production.env.example", "deploy/systemd/vending.env.example"],
)
def test_every_variable_an_example_env_file_sets_is_read_by_the_settings(path):
    names = env_file_names(ROOT / path)
    assert names, path
    # docker-compose.yml reads its `.env` (a copy of production.env.example) for ${NAME}s.
    read = READ_BY_SETTINGS | (COMPOSE_VARIABLES if path.startswith("deploy/production") else set())
    assert not names - read, sorted(names - read)


def test_secrets_compose_interpolates_have_no_default():
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"(:?[-?])?", COMPOSE_TEXT)
        assert uses, name
        assert set(uses) == {":?"}, f"{name} must be required (${{{name}:?...}}), not defaulted"


def test_the_topology_is_the_one_the_issue_asks_for():
    assert SERVICES["discovery"]["network_mode"] == "host"
    assert "/dev/ttyUSB0:/dev/ttyUSB0" in SERVICES["serial-bridge"]["devices"]
    assert "dialout" in SERVICES["serial-bridge"]["group_add"]
    assert {"nginx", "postgres", "redis"} <= set(SERVICES)
    for name, service in SERVICES.items():
        assert "healthcheck" in service or service.get("restart") == "no", name
    named = set(COMPOSE["volumes"])
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in named, f"volume {source} is not declared"


def test_files_compose_and_the_dockerfile_refer_to_exist():
    assert (ROOT / "Dockerfile").is_file()
    for name in OUR_IMAGE:
        build = SERVICES[name]["build"]
        assert (ROOT / (build if isinstance(build, str) else build["context"])).is_dir()
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
    dockerfile = (ROOT / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?:--\S+ )*(\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / copied).exists(), copied
    assert "requirements/prod.txt" in dockerfile and (ROOT / "requirements/prod.txt").exists()


def test_the_dockerfile_runs_as_a_user_and_its_commands_are_real():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1)
    assert_real_command(yaml.safe_load(cmd), "Dockerfile CMD")
    healthcheck = re.search(r"HEALTHCHECK.*?CMD (\[.*?\])$", dockerfile, re.DOTALL | re.MULTILINE)
    for path in health_paths(healthcheck.group(1)):
        resolve(path)


def test_healthchecks_run_real_commands_or_ask_real_endpoints():
    checked = 0
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test")
        if not test:
            continue
        argv = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
        if argv[:2] == ["python", "manage.py"]:
            assert_manage_py_command(argv, f"healthcheck of {name}")
            checked += 1
        for path in health_paths(" ".join(argv)):
            try:
                resolve(path)
            except Resolver404:
                pytest.fail(f"healthcheck of {name} asks {path}, which no URL serves")
            checked += 1
    assert checked >= 4


def test_the_compose_nginx_conf_is_the_template_rendered_for_compose():
    expected = load_prod_local().render_compose()
    assert (ROOT / "deploy/nginx/vending.conf").read_text() == expected, (
        "run `python deploy/prod_local.py render-compose` after editing the template"
    )


def upstream_servers(conf: str, name: str) -> list[tuple[str, str]]:
    upstream = re.search(rf"upstream {name} \{{(.*?)\}}", conf, re.DOTALL).group(1)
    return re.findall(r"server (\S+):(\d+)", upstream)


def test_nginx_upstreams_are_the_compose_services_on_their_ports():
    """vending_web: the gunicorn services, on the port they bind; vending_ws: Daphne's, on
    the port it serves; nginx waits for each to be healthy; /ws/ alone goes to Daphne."""
    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    web, ws = upstream_servers(conf, "vending_web"), upstream_servers(conf, "vending_ws")
    assert len(web) >= 2 and len(ws) >= 1
    for host, port in web:
        assert host in SERVICES, f"nginx upstream {host} is not a compose service"
        command = SERVICES[host]["command"]
        assert is_gunicorn(command), f"{host} does not run gunicorn"
        assert command[command.index("--bind") + 1] == f"0.0.0.0:{port}"
    for host, port in ws:
        assert host in SERVICES, f"nginx upstream {host} is not a compose service"
        command = SERVICES[host]["command"]
        assert command[2] == "serve" and command[command.index("--port") + 1] == port
    depends = SERVICES["nginx"]["depends_on"]
    for host, _port in web + ws:
        assert depends[host] == {"condition": "service_healthy"}, host
    proxied = dict(re.findall(r"location (\S+) \{\s*proxy_pass http://(\w+);", conf))
    assert proxied.pop("/ws/") == "vending_ws"
    assert set(proxied.values()) == {"vending_web"}, proxied
    nginx = SERVICES["nginx"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in nginx["volumes"]}
    assert mounted["./deploy/nginx/vending.conf"].startswith("/etc/nginx/conf.d/")
    cert_dir = mounted["./deploy/certs"]
    for directive in ("ssl_certificate", "ssl_certificate_key"):
        path = re.search(rf"{directive}\s+(\S+);", conf).group(1)
        assert path.startswith(cert_dir + "/")
    static = re.search(r"alias (\S+);", conf).group(1).rstrip("/")
    assert mounted["static"] == static


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_compose_configuration(tmp_path):
    """``nginx -t`` on the compose file, with the container's names and paths mapped here."""
    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    cert, key = tmp_path / "vending.crt", tmp_path / "vending.key"
    load_prod_local().ensure_certificate(cert, key)
    conf = conf.replace("/etc/nginx/certs", str(tmp_path)).replace("/srv/static", str(tmp_path))
    conf = re.sub(r"server (web\d+|ws):", "server 127.0.0.1:", conf)
    (tmp_path / "vending.conf").write_text(conf)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(load_prod_local().MAIN_CONF.format(var=tmp_path, user=""))
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_each_systemd_unit_runs_real_commands_with_its_environment(unit):
    parser = ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    # systemd allows repeated keys (ExecStartPre, DeviceAllow); keep the last for the parser
    # and read the repeated ones from the text.
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["Restart"] in ("on-failure", "always")
    assert service["EnvironmentFile"] == "/etc/vending/vending.env"
    assert service["WorkingDirectory"] == "/srv/vending"
    lines = re.findall(r"^(ExecStart(?:Pre)?)=(.*)$", unit.read_text(), re.MULTILINE)
    assert any(key == "ExecStart" for key, _ in lines)
    for key, value in lines:
        argv = shlex.split(value)
        assert argv[0] == "/srv/vending/.venv/bin/python", f"{unit.name} {key}"
        assert_real_command(argv, f"{unit.name} {key}")
    for assignment in re.findall(r"^Environment=(\S+)$", unit.read_text(), re.MULTILINE):
        assert assignment.split("=")[0] in READ_BY_SETTINGS


def test_the_serial_bridge_unit_may_open_serial_ports():
    text = (SYSTEMD / "vending-serial-bridge.service").read_text()
    assert "SupplementaryGroups=dialout" in text
    assert "PrivateDevices=yes" not in text
    assert "DeviceAllow=char-ttyUSB rw" in text
    assert {u.name for u in UNITS} >= {
        "vending-web.service",
        "vending-ws.service",
        "vending-discovery.service",
        "vending-serial-bridge.service",
        "vending-sweeper.service",
    }


def test_procfile_prod_local_runs_real_commands():
    lines = (ROOT / "Procfile.prod-local").read_text().splitlines()
    processes = dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))
    assert {"nginx", "web", "ws", "discovery", "bridge", "sweeper"} <= set(processes)
    assert "daemon off;" in processes["nginx"]
    for name, command in processes.items():
        if name == "nginx":
            continue
        argv = shlex.split(command.replace("$WEB_PORT", "8001").replace("$WS_PORT", "8002"))
        assert argv[0] == "exec"
        assert_real_command(argv[1:], f"Procfile.prod-local {name}")
    assert is_gunicorn(shlex.split(processes["web"])[1:])
    assert shlex.split(processes["ws"])[2:4] == ["manage.py", "serve"]


def test_every_variable_prod_local_sets_for_the_server_is_read_by_the_settings(
    tmp_path, monkeypatch
):
    # As on a fresh machine: the CI run on PostgreSQL exports DATABASE_URL, which would
    # make prod-local's value look inherited rather than set.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    prod_local = load_prod_local()
    args = prod_local.parse_args(["prepare", "--var-dir", str(tmp_path)])
    env = prod_local.child_environment(args, tmp_path, tmp_path / "static")
    procfile_only = {"PROD_LOCAL_DIR", "WEB_PORT", "WS_PORT", "PATH"}
    set_here = {name for name, value in env.items() if os.environ.get(name) != value}
    assert {"DEBUG", "TRUST_X_FORWARDED_PROTO", "DATABASE_URL"} <= set_here
    assert not set_here - procfile_only - READ_BY_SETTINGS


def test_the_workers_believe_forwarded_addresses_from_nginx_alone():
    nginx_ip = COMPOSE["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)
    for name, service in COMPOSE["services"].items():
        trusted = (service.get("environment") or {}).get("TRUSTED_PROXIES")
        if trusted is None:
            continue
        networks = [ipaddress.ip_network(cidr) for cidr in trusted.split(",")]
        assert networks == [ipaddress.ip_network(f"{nginx_ip}/32")], name


def test_each_long_running_service_counts_metrics_in_a_directory_of_its_own():
    # Containers do not share a PID namespace; two sharing a metrics directory would write
    # the same pid-named files and judge each other's files as dead.
    dirs = {}
    for name, service in COMPOSE["services"].items():
        env = service.get("environment") or {}
        if "METRICS_COLLECT_DIR" not in env or service.get("restart") == "no":
            continue
        own = env["PROMETHEUS_MULTIPROC_DIR"]
        assert Path(own).parent == Path(env["METRICS_COLLECT_DIR"]), name
        dirs[name] = own
    assert {"web1", "web2", "ws", "discovery", "serial-bridge", "sweeper"} <= set(dirs)
    assert len(set(dirs.values())) == len(dirs), dirs


def gunicorn_commands() -> dict[str, list[str]]:
    """Every gunicorn command line the launchers run, by where it is written."""
    found = {f"service {n}": SERVICES[n]["command"] for n in OUR_IMAGE}
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    found["Dockerfile CMD"] = yaml.safe_load(cmd.group(1))
    for unit in UNITS:
        for value in re.findall(r"^ExecStart=(.*)$", unit.read_text(), re.MULTILINE):
            found[unit.name] = shlex.split(value)
    for line in (ROOT / "Procfile.prod-local").read_text().splitlines():
        if line and not line.startswith("#"):
            name, command = line.split(": ", 1)
            found[f"Procfile.prod-local {name}"] = shlex.split(
                command.replace("$WEB_PORT", "8001")
            )[1:]
    return {where: argv for where, argv in found.items() if is_gunicorn(argv)}


def test_every_launcher_runs_gunicorn_with_the_one_configuration():
    found = gunicorn_commands()
    assert {
        "service web1",
        "service web2",
        "Dockerfile CMD",
        "vending-web.service",
        "Procfile.prod-local web",
    } <= set(found)
    for where, argv in found.items():
        assert_gunicorn_command(argv, where)


@pytest.mark.parametrize("where", sorted(gunicorn_commands()))
def test_gunicorn_check_config_accepts_each_launchers_command(where, tmp_path):
    """``--check-config`` runs deploy/gunicorn.conf.py (settings included) and imports the
    WSGI application, as the master and each worker will."""
    argv = gunicorn_commands()[where]
    env = dict(
        os.environ,
        DATA_DIR=str(tmp_path),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    result = subprocess.run(
        [sys.executable, *argv[1:], "--check-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
