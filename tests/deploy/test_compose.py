"""docker-compose.yml, the Dockerfile, nginx's configuration and the systemd units, checked by
construction (no Docker engine here): whatever they run must exist and accept its arguments,
whatever they set must be read by the settings, whatever they point at must be there.

Two kinds of commands run: ``python manage.py NAME ...`` (checked with the command's own
parser) and the production web server, ``python deploy/web.py --bind ...`` (checked with its
own parser, and run in a child up to the point where granian would bind and fork: the
settings, the server object with every option, granian's checks of them, and the WSGI
application loaded as a worker loads it)."""

import ast
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from configparser import ConfigParser
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands, load_command_class
from django.urls import Resolver404, resolve

from tests.deploy import dry_run_web, load_prod_local, load_web

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


WEB_SERVER = "deploy/web.py"
WEB = load_web()


def is_web(argv: list[str]) -> bool:
    return len(argv) > 1 and argv[1] == WEB_SERVER


def assert_web_command(argv: list[str], where: str) -> None:
    """``argv`` is ``python deploy/web.py ARGS...`` (relative to the working directory, which
    is the project's in every launcher) and deploy/web.py's own parser takes ARGS."""
    assert Path(argv[0]).name.startswith("python"), f"{where}: {argv}"
    assert is_web(argv), f"{where}: not python {WEB_SERVER}: {argv}"
    assert (ROOT / argv[1]).is_file(), f"{where}: no {argv[1]}"
    try:
        WEB.parse(argv[2:])
    except SystemExit as exc:  # argparse's way of refusing
        raise AssertionError(f"{where}: deploy/web.py refuses {argv[2:]}") from exc


def assert_real_command(argv: list[str], where: str) -> None:
    if is_web(argv):
        assert_web_command(argv, where)
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


def test_http_is_served_by_granian_and_the_websocket_by_manage_py_serve():
    for name in ("web1", "web2"):
        assert is_web(SERVICES[name]["command"]), name
        # Docker waits this long after SIGTERM before its SIGKILL: longer than deploy/web.py
        # gives its workers to finish their requests.
        grace = SERVICES[name]["stop_grace_period"]
        assert grace == "25s" and int(grace[:-1]) > WEB.STOP_TIMEOUT, name
    assert SERVICES["ws"]["command"][:3] == ["python", "manage.py", "serve"]


def test_a_bad_argument_is_caught_by_the_command_check():
    with pytest.raises(Exception, match=r"unrecognized arguments|invalid"):
        assert_manage_py_command(
            ["python", "manage.py", "serve", "--port", "8000", "--workers", "2"], "probe"
        )
    with pytest.raises(AssertionError, match="no management command"):
        assert_manage_py_command(["python", "manage.py", "runserver_plus"], "probe")
    good = ["python", WEB_SERVER, "--bind", "0.0.0.0:8000"]
    assert_web_command(good, "probe")
    assert_web_command([*good, "--workers", "3", "--threads", "4"], "probe")
    assert_web_command(["python", WEB_SERVER, "--bind", "[::1]:8000"], "probe")
    for bad in (
        [*good, "--workerz", "2"],  # unknown flag
        good[:2],  # no --bind
        ["python", WEB_SERVER, "--bind", "8000"],  # no host
        ["python", WEB_SERVER, "--bind", "0.0.0.0:http"],  # not a port number
        ["python", WEB_SERVER, "--bind", "0.0.0.0:70000"],
        [*good, "--threads", "0"],
    ):
        with pytest.raises(AssertionError, match="refuses"):
            assert_web_command(bad, "probe")
    with pytest.raises(AssertionError, match=r"not python deploy/web\.py"):
        assert_web_command(["python", "deploy/other.py", *good[2:]], "probe")


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
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "SERVER_NAME"):
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
    """vending_web: the granian services (deploy/web.py), on the port they bind;
    vending_ws: ``manage.py serve``'s, on the port it serves; nginx waits for each to be
    healthy; /ws/ alone goes to it."""
    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    web, ws = upstream_servers(conf, "vending_web"), upstream_servers(conf, "vending_ws")
    assert len(web) >= 2 and len(ws) >= 1
    for host, port in web:
        assert host in SERVICES, f"nginx upstream {host} is not a compose service"
        command = SERVICES[host]["command"]
        assert is_web(command), f"{host} does not run deploy/web.py"
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
    # The image renders /etc/nginx/templates/NAME.template into /etc/nginx/conf.d/NAME.
    assert mounted["./deploy/nginx/vending.conf"] == "/etc/nginx/templates/default.conf.template"
    cert_dir = mounted["./deploy/certs"]
    for directive in ("ssl_certificate", "ssl_certificate_key"):
        path = re.search(rf"{directive}\s+(\S+);", conf).group(1)
        assert path.startswith(cert_dir + "/")
    static = re.search(r"alias (\S+);", conf).group(1).rstrip("/")
    assert mounted["static"] == static


def test_nginx_closes_idle_upstream_connections_before_granian_does(tmp_path):
    """granian closes a keep-alive connection idle for its header-read timeout (its default
    30 s was measured closing one nginx still kept, nginx's default being 60 s); nginx must
    close first, or a vend POST sent on a connection granian is closing becomes a 502."""
    for name in ("vending.conf.template", "vending.conf"):
        conf = (ROOT / "deploy/nginx" / name).read_text()
        block = re.search(r"upstream vending_web \{(.*?)\n\}", conf, re.S).group(1)
        found = re.search(r"^\s*keepalive_timeout (\d+)s;", block, re.M)
        assert found, f"{name}: vending_web sets no keepalive_timeout (nginx's default is 60 s)"
        env = dict(os.environ, DATA_DIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
        env.pop("DJANGO_SETTINGS_MODULE", None)
        built = dry_run_web(["--bind", "127.0.0.1:8001"], env)
        assert int(found.group(1)) * 1000 < built["idle_ms"], (name, built["idle_ms"])


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_compose_configuration(tmp_path):
    """``nginx -t`` on the compose file, with the container's names and paths mapped here."""
    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    cert, key = tmp_path / "vending.crt", tmp_path / "vending.key"
    load_prod_local().ensure_certificate(cert, key)
    conf = as_the_nginx_image_renders_it(conf)
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
    assert is_web(shlex.split(processes["web"])[1:])
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
    assert {"web1", "web2", "ws", "discovery", "serial-bridge", "sweeper", "notifier"} <= set(dirs)
    assert len(set(dirs.values())) == len(dirs), dirs


def web_commands() -> dict[str, list[str]]:
    """Every command line of the production web server the launchers run, by where it is
    written."""
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
    return {where: argv for where, argv in found.items() if is_web(argv)}


def test_every_launcher_runs_the_one_web_server_on_the_address_it_binds():
    found = web_commands()
    assert set(found) == {
        "service web1",
        "service web2",
        "Dockerfile CMD",
        "vending-web.service",
        "Procfile.prod-local web",
    }
    for where, argv in found.items():
        assert_web_command(argv, where)
        # --bind only: workers, threads and the rest come from the settings (WEB_*).
        assert argv[2] == "--bind" and len(argv) == 4, f"{where}: {argv}"
    assert found["vending-web.service"][3] == "127.0.0.1:8001"
    assert found["Procfile.prod-local web"][3] == "127.0.0.1:8001"  # $WEB_PORT
    assert found["Dockerfile CMD"][3] == "0.0.0.0:8000"
    # systemd waits this long after SIGTERM before its SIGKILL.
    unit = (SYSTEMD / "vending-web.service").read_text()
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1)) > (
        WEB.STOP_TIMEOUT
    )


@pytest.mark.parametrize("where", sorted(web_commands()))
def test_the_web_server_is_built_from_each_launchers_command(where, tmp_path):
    """deploy/web.py with the launcher's arguments, in a child, up to serving: the settings,
    the granian server with every option, granian's own checks of them and the WSGI
    application loaded as each worker loads it; a wrong option fails here."""
    argv = web_commands()[where]
    env = dict(
        os.environ,
        DATA_DIR=str(tmp_path),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        WEB_WORKERS="3",
        WEB_THREADS="5",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    built = dry_run_web(argv[2:], env)

    host, port = argv[3].rsplit(":", 1)
    assert (built["address"], built["port"]) == (host, int(port))
    assert built["target"] == "vending_site.wsgi:application" and built["interface"] == "wsgi"
    assert (built["workers"], built["threads"]) == (3, 5)  # the settings' WEB_*
    assert built["kill_timeout"] == WEB.STOP_TIMEOUT and built["respawn"] is True
    assert built["max_rss"] is None  # WEB_MAX_RSS_MB=0: off
    assert built["application"] == "vending_site.wsgi.Application"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        # granian's own check in serve(): its longest idle time is 600 s.
        (
            ("blocking_threads_idle_timeout=600", "blocking_threads_idle_timeout=601"),
            "Blocking threads idle timeout must be between 5 and 600 seconds",
        ),
        (("workers_kill_timeout=", "workers_kill_timout="), "unexpected keyword argument"),
        (
            ('TARGET = "vending_site.wsgi:application"', 'TARGET = "vending_site.wsgi:app"'),
            "has no attribute 'app'",
        ),
    ],
    ids=["out-of-range", "misspelt-option", "wrong-application"],
)
def test_a_wrong_server_option_fails_the_build_check(change, refusal, tmp_path):
    """The check above has teeth: deploy/web.py with one option wrong (a copy, its ROOT
    pointed back at the project) fails it."""
    text = (ROOT / WEB_SERVER).read_text()
    root_line = "ROOT = Path(__file__).resolve().parent.parent"
    assert root_line in text and change[0] in text
    mutant = tmp_path / "web.py"
    mutant.write_text(text.replace(root_line, f"ROOT = Path({str(ROOT)!r})").replace(*change))
    env = dict(
        os.environ, DATA_DIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics")
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with pytest.raises(AssertionError, match=refusal):
        dry_run_web(["--bind", "127.0.0.1:8001"], env, script=mutant)


# --- The network edge ---------------------------------------------------------------------


def with_defaults(text: str) -> str:
    """``text`` as compose reads it when ``.env`` sets none of the optional variables."""
    return re.sub(r"\$\{[A-Z][A-Z0-9_]*:-([^}]*)\}", r"\1", text)


def as_the_nginx_image_renders_it(conf: str, server_name: str = "vending.example.com") -> str:
    """What the nginx image writes to conf.d: ``${VENDING_*}`` filled from its environment."""
    return conf.replace("${VENDING_SERVER_NAME}", server_name)


def published(service: str) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each port a service publishes."""
    found = []
    for entry in SERVICES[service].get("ports", []):
        parts = with_defaults(str(entry)).rsplit(":", 2)
        address = parts[0] if len(parts) == 3 else ""
        found.append((address, *parts[-2:]))
    return found


def test_the_device_port_is_published_on_loopback_unless_an_address_is_configured():
    device = [entry for entry in published("nginx") if entry[2] == "5000"]
    assert device == [("127.0.0.1", "5000", "5000")]
    entry = next(e for e in SERVICES["nginx"]["ports"] if str(e).endswith(":5000:5000"))
    assert entry.startswith("${DEVICE_BIND:-"), "the address must be configurable"
    assert "DEVICE_BIND" in env_file_names(ROOT / "deploy/production.env.example")


def test_redis_is_published_nowhere_and_asks_for_a_password():
    redis = SERVICES["redis"]
    assert "ports" not in redis
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # healthcheck


def test_every_redis_url_carries_the_password():
    urls = {
        name: service["environment"]["REDIS_URL"]
        for name, service in SERVICES.items()
        if "REDIS_URL" in service.get("environment", {})
    }
    assert set(OUR_IMAGE) <= set(urls)
    for name, url in urls.items():
        assert url.startswith("redis://:${REDIS_PASSWORD:?"), name
    # The host-network discovery service reaches Redis at its fixed address.
    address = SERVICES["redis"]["networks"]["default"]["ipv4_address"]
    assert f"@{address}:6379/" in urls["discovery"]


def test_the_nginx_image_fills_in_only_our_variables():
    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", conf)) == {"VENDING_SERVER_NAME"}
    nginx = SERVICES["nginx"]["environment"]
    assert nginx["NGINX_ENVSUBST_FILTER"] == "^VENDING_"
    assert nginx["VENDING_SERVER_NAME"].startswith("${SERVER_NAME:?")


def test_plain_http_is_redirected_to_the_configured_name_not_the_clients_host():
    for name in ("vending.conf.template", "vending.conf"):
        conf = (ROOT / "deploy/nginx" / name).read_text()
        redirect = re.search(r"return 301 (\S+);", conf).group(1)
        assert "$host" not in redirect and "$http_host" not in redirect, (name, redirect)


def test_nginx_names_no_version_and_speaks_only_forward_secret_aead_tls():
    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    assert re.search(r"^server_tokens off;", conf, re.M)
    assert re.search(r"ssl_protocols\s+TLSv1\.2 TLSv1\.3;", conf)
    assert re.search(r"ssl_prefer_server_ciphers off;", conf)
    ciphers = re.search(r"ssl_ciphers\s+(\S+);", conf).group(1).split(":")
    for cipher in ciphers:
        assert cipher.startswith(("ECDHE-", "DHE-")), cipher  # forward secret
        assert cipher.endswith(("GCM-SHA256", "GCM-SHA384", "CHACHA20-POLY1305")), cipher


def test_nginx_sends_the_same_content_security_policy_as_django():
    from vending_site.http.csp import POLICY

    conf = (ROOT / "deploy/nginx/vending.conf").read_text()
    sent = re.search(r'add_header Content-Security-Policy "([^"]+)" always;', conf).group(1)
    assert sent == POLICY


def _sweeps(argv: list[str]) -> bool:
    """``argv`` runs the sweeper: ``manage.py sweep_commands --every N``, round after round."""
    if argv and argv[0] == "exec":
        argv = argv[1:]
    return argv[1:3] == ["manage.py", "sweep_commands"] and "--every" in argv


def test_every_shipped_topology_runs_the_sweeper():
    # Reads never sweep (transactions/tests/test_reads_never_write.py): without the sweeper
    # an overdue vend would never expire nor show as unconfirmed.
    for procfile in ("Procfile", "Procfile.demo", "Procfile.prod-local"):  # run, demo, prod-local
        lines = (ROOT / procfile).read_text().splitlines()
        commands = [line.split(": ", 1)[1] for line in lines if line and not line.startswith("#")]
        assert any(_sweeps(shlex.split(command)) for command in commands), procfile
    assert any(_sweeps(service.get("command", [])) for service in SERVICES.values())
    unit = (SYSTEMD / "vending-sweeper.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert _sweeps(shlex.split(exec_start))
    assert "WantedBy=multi-user.target" in unit
    enable = re.search(r"systemctl enable --now (.*)", (ROOT / "docs/production.md").read_text())
    assert "vending-sweeper" in enable.group(1).split()


def _notifies(argv: list[str]) -> bool:
    """``argv`` runs the notifier: ``manage.py run_notifier``, until stopped."""
    if argv and argv[0] == "exec":
        argv = argv[1:]
    return argv[1:3] == ["manage.py", "run_notifier"] and "--once" not in argv


def test_every_shipped_topology_runs_the_notifier():
    # Without it the outbox only fills: no webhook, e-mail or alert check ever goes out.
    for procfile in ("Procfile", "Procfile.demo", "Procfile.prod-local"):
        lines = (ROOT / procfile).read_text().splitlines()
        commands = [line.split(": ", 1)[1] for line in lines if line and not line.startswith("#")]
        assert any(_notifies(shlex.split(command)) for command in commands), procfile
    assert any(_notifies(service.get("command", [])) for service in SERVICES.values())
    unit = (SYSTEMD / "vending-notifier.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert _notifies(shlex.split(exec_start))
    assert "WantedBy=multi-user.target" in unit
    enable = re.search(r"systemctl enable --now (.*)", (ROOT / "docs/production.md").read_text())
    assert "vending-notifier" in enable.group(1).split()
