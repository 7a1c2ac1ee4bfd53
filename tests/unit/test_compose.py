"""compose.yaml, Dockerfile and the monitoring configs, checked without a Docker engine.

compose.yaml is interpolated as compose does (`${VAR:-default}` with an empty environment: it
must work with zero setup), validated against the Compose Specification JSON schema, then held
to what a reviewer checks: pinned images, healthchecks behind every service_healthy, existing
bind mounts, only the entry points publishing ports, passwords only from the environment, the
data stores on an internal network, and configs that agree with each other (nginx template,
Prometheus targets, Grafana datasource, the API's settings and Redis contract).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from nginx_check import check_with_local_layout

from core.contract.dataset import REDIS_HASH_CONFIG
from core.settings import SERVICE_CONCERNS, DatasetSettings, env_names
from stack.launcher import access_log_setting
from stack.mtail import DEFAULT_PORT as MTAIL_PORT
from stack.nginx import DEFAULTS, SERVER_PARAMS, TEMPLATE, placeholders

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
# The Compose Specification's JSON schema (compose-spec/compose-spec, schema/compose-spec.json).
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "compose-spec.json"

PUBLISHERS = {"nginx", "grafana", "prometheus"}
NO_HEALTHCHECK = {"nginx-exporter": "FROM scratch image: no shell or HTTP client to run a check"}

_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: dict[str, str], missing: list[str]) -> Any:
    """Compose's interpolation of every string in the document ($$ is a literal $)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op = m.group("op")
        if op == ":-":
            return env.get(name) or m.group("default")
        if op == "-":
            return env.get(name, m.group("default"))
        if name not in env:
            missing.append(name)
        return env.get(name, "")

    return _VAR.sub(sub, value)


RAW_TEXT = COMPOSE.read_text(encoding="utf-8")
RAW: dict[str, Any] = yaml.safe_load(RAW_TEXT)
_missing: list[str] = []
DOC: dict[str, Any] = interpolate(RAW, {}, _missing)
SERVICES: dict[str, dict[str, Any]] = DOC["services"]


def env_of(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


# ---------------------------------------------------------------------------------------------
# the file as compose reads it


def test_every_variable_has_a_default() -> None:
    assert _missing == [], f"variables without a default (compose needs setup): {_missing}"


def test_valid_against_the_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    for doc in (RAW, DOC):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


# ---------------------------------------------------------------------------------------------
# images


PINNED = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9./_-]*):(?P<tag>v?\d+\.\d+(?:\.\d+)?(?:-[a-z0-9.]+)?)$"
)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_image_is_built_here_or_pinned_to_an_exact_version(name: str) -> None:
    service = SERVICES[name]
    if "build" in service:
        context = ROOT / service["build"]["context"]
        assert context.is_dir()
        assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()
        return
    m = PINNED.match(service["image"])
    assert m, f"{name}: {service['image']} is not pinned to an exact version tag"
    version = m.group("tag").lstrip("v").split("-")[0].split(".")
    # Postgres versions are major.minor; everything else here is major.minor.patch.
    assert len(version) == (2 if m.group("repo") == "postgres" else 3), service["image"]


def test_no_image_names_a_registry_host() -> None:
    """Images are named as Docker Hub names them; a mirror is the user's to set (a registry
    host is a first path segment with a dot or a port)."""
    for name, service in SERVICES.items():
        first = service["image"].split("/")[0]
        assert "/" not in service["image"] or not re.search(r"[.:]", first), (name, first)


def test_the_api_and_the_seeder_have_an_image_each() -> None:
    built = {name: s for name, s in SERVICES.items() if "build" in s}
    images = {name: (s["image"], s["build"].get("target")) for name, s in built.items()}
    assert images == {
        "mtail": ("surge-mtail:local", None),
        "api": ("surge-api:local", "api"),
        "seeder": ("surge-seeder:local", "seeder"),
        "redis-keeper": ("surge-seeder:local", "seeder"),
    }


def test_mtail_reads_the_log_nginx_writes_with_the_programs_make_up_uses() -> None:
    """One log file in a volume both mount, Debian's mtail on a pinned base, the programs
    mounted where the image's entrypoint loads them, and Prometheus's mtail job on its port."""
    mtail, nginx = SERVICES["mtail"], SERVICES["nginx"]
    log = Path(env_of("nginx")["SURGE_NGINX_ACCESS_LOG_PATH"])
    assert mtail["command"] == ["--logs", str(log)]
    assert (("nginx-logs", str(log.parent), False)) in _volumes(nginx)
    assert (("nginx-logs", str(log.parent), True)) in _volumes(mtail)
    assert ("./monitoring/mtail", "/etc/mtail", True) in _volumes(mtail)
    assert (ROOT / "monitoring/mtail/nginx.mtail").is_file()
    assert mtail["depends_on"] == {"nginx": {"condition": "service_healthy"}}
    dockerfile = (ROOT / mtail["build"]["context"] / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert PINNED.match(base) and "/" not in base, base
    assert re.search(r"\bmtail=3\.0\.0~rc\d+-\S+", dockerfile), "mtail's package version pinned"
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    assert entry[entry.index("--progs") + 1] == "/etc/mtail"
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert "3903" in " ".join(mtail["healthcheck"]["test"])


def test_nginx_image_supports_resolve_in_upstreams() -> None:
    m = PINNED.match(SERVICES["nginx"]["image"])
    assert m and m.group("repo") == "nginx"
    assert tuple(int(x) for x in m.group("tag").split("-")[0].split(".")) >= (1, 27, 3)


# ---------------------------------------------------------------------------------------------
# health and start order


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_long_running_services_have_a_healthcheck(name: str) -> None:
    service = SERVICES[name]
    if is_one_shot(service):
        assert "healthcheck" not in service
        return
    assert service.get("restart") == "unless-stopped"
    check = service.get("healthcheck")
    assert check, f"{name} has no healthcheck"
    if name in NO_HEALTHCHECK:
        assert check == {"disable": True}, NO_HEALTHCHECK[name]
        return
    assert check["test"][0] in {"CMD", "CMD-SHELL"}
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name}: healthcheck without {key}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_targets_exist_and_can_satisfy_the_condition(name: str) -> None:
    for target, spec in (SERVICES[name].get("depends_on") or {}).items():
        assert target in SERVICES, f"{name} depends on unknown {target}"
        condition = spec["condition"]
        if condition == "service_healthy":
            check = SERVICES[target].get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), (
                f"{name} waits for {target} to be healthy, but it has no healthcheck"
            )
        elif condition == "service_completed_successfully":
            assert is_one_shot(SERVICES[target]), f"{target} is not a one-shot job"
        else:
            assert condition == "service_started"


def test_start_order() -> None:
    cond = {
        n: {t: s["condition"] for t, s in (v.get("depends_on") or {}).items()}
        for n, v in SERVICES.items()
    }
    assert cond["seeder"] == {"postgres": "service_healthy", "redis": "service_healthy"}
    assert cond["api"]["seeder"] == "service_completed_successfully"
    assert cond["nginx"] == {"api": "service_healthy"}
    assert SERVICES["api"]["healthcheck"]["test"][-1].count("/ready") == 1


# ---------------------------------------------------------------------------------------------
# mounts, ports, networks, secrets


def _volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
    return out


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_mounts_exist(name: str) -> None:
    declared = set(DOC.get("volumes") or {})
    for source, _target, read_only in _volumes(SERVICES[name]):
        if source.startswith("."):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            assert read_only, f"{name}: config mount {source} should be read-only"
        elif source.startswith("/"):
            # Host system paths, for the host-metrics exporters only, read-only.
            assert name in {"node-exporter", "cadvisor"}, f"{name} mounts host path {source}"
            assert read_only, f"{name}: host mount {source} is writable"
        else:
            assert source in declared, f"{name}: volume {source} is not declared"


def test_only_the_entry_points_publish_ports() -> None:
    publishing = {name for name, s in SERVICES.items() if s.get("ports")}
    assert publishing == PUBLISHERS
    assert SERVICES["nginx"]["ports"] == ["8080:8080"]
    # Admin UIs bind to loopback unless told otherwise.
    assert SERVICES["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert SERVICES["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def test_replicas_scale_freely() -> None:
    api = SERVICES["api"]
    assert RAW["services"]["api"]["deploy"]["replicas"] == "${SURGE_REPLICAS:-2}"
    assert "container_name" not in api and "ports" not in api
    assert not any("container_name" in s for s in SERVICES.values())


def test_data_stores_are_on_an_internal_network_only() -> None:
    networks = DOC["networks"]
    for name in ("postgres", "redis"):
        joined = SERVICES[name]["networks"]
        assert joined and all(networks[n].get("internal") is True for n in joined), name
    for name in PUBLISHERS:
        # A published port needs a network with a way out.
        assert not any(networks[n].get("internal") for n in SERVICES[name]["networks"]), name


def test_passwords_come_from_the_environment() -> None:
    secret_key = re.compile(r"(PASSWORD|PASS|SECRET|TOKEN)$")
    for name, service in RAW["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if key == "<<":
                continue
            value = str(value)
            if secret_key.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", value), f"{name}.{key}: {value}"
            for m in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", m.group(1)), f"{name}.{key}"
    # The documented local defaults are the only literal credentials in the file.
    assert "${POSTGRES_PASSWORD:-surge}" in RAW_TEXT
    assert "${GRAFANA_ADMIN_PASSWORD:-admin}" in RAW_TEXT


# ---------------------------------------------------------------------------------------------
# agreement with the rest of the project


def test_app_environment_names_real_settings() -> None:
    known = env_names(*SERVICE_CONCERNS)
    for name in ("api", "seeder"):
        surge = {k for k in env_of(name) if k.startswith("SURGE_")}
        assert surge <= known, f"{name}: unknown settings {surge - known}"
        assert env_of(name)["SURGE_DATABASE_URL"].split("@")[1].startswith("postgres:5432/")
        assert env_of(name)["SURGE_REDIS_URL"].startswith("redis://redis:6379/")
    assert env_of("api")["GRANIAN_BACKPRESSURE"] == env_of("api")["SURGE_REDIS_POOL_SIZE"]
    assert int(env_of("seeder")["SURGE_STUDENTS"]) == DatasetSettings().students


def test_seeder_runs_a_declared_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert SERVICES["seeder"]["command"][0] in scripts


def test_redis_runs_with_the_contract_hash_config_and_only_the_seeders_snapshots() -> None:
    command = SERVICES["redis"]["command"]
    for key, value in REDIS_HASH_CONFIG.items():
        assert command[command.index(f"--{key}") + 1] == value
    # No periodic snapshots or AOF: only the one the seeder asks for, kept in a volume.
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert ("redis-data", "/data", False) in _volumes(SERVICES["redis"])


def test_the_redis_keeper_watches_after_the_seed() -> None:
    keeper = SERVICES["redis-keeper"]
    assert keeper["command"][:2] == ["surge-seed", "--watch"]
    assert keeper["depends_on"]["seeder"]["condition"] == "service_completed_successfully"


def test_nginx_template_renders_with_compose_values(tmp_path: Path) -> None:
    nginx = SERVICES["nginx"]
    assert (ROOT / "nginx/nginx.conf.template").resolve() == TEMPLATE
    assert ("./nginx/nginx.conf.template", "/etc/nginx/templates/nginx.conf.template", True) in (
        _volumes(nginx)
    )
    env = env_of("nginx")
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert re.search(env["NGINX_ENVSUBST_FILTER"], "SURGE_NGINX_LISTEN")
    values = {k: v for k, v in env.items() if k.startswith("SURGE_")}
    assert set(values) == placeholders(TEMPLATE.read_text())
    # Same knob defaults as the local launcher (which turns the access log on for mtail).
    assert {k: values[k] for k in DEFAULTS} == DEFAULTS | {
        "SURGE_NGINX_ACCESS_LOG": access_log_setting({})
    }
    assert values["SURGE_NGINX_ACCESS_LOG"] == "on"
    upstream = values["SURGE_NGINX_UPSTREAM"]
    assert "resolver 127.0.0.11 valid=5s" in upstream
    assert f"server api:8000 resolve {SERVER_PARAMS};" in upstream
    assert values["SURGE_NGINX_LISTEN"] == "8080"
    assert f"http://nginx:{values['SURGE_NGINX_STATUS_LISTEN']}/stub_status" in " ".join(
        SERVICES["nginx-exporter"]["command"]
    )
    assert values["SURGE_NGINX_STATUS_LISTEN"] in " ".join(nginx["healthcheck"]["test"])
    assert "test is successful" in check_with_local_layout(values, tmp_path)


def test_prometheus_scrapes_every_replica_and_exporter() -> None:
    prom = SERVICES["prometheus"]
    assert "--web.enable-remote-write-receiver" in prom["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert ("./monitoring/prometheus", "/etc/prometheus", True) in _volumes(prom)
    config = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {
        "api": ("api", 8000),
        "nginx": ("nginx-exporter", 9113),
        "mtail": ("mtail", MTAIL_PORT),
        "redis": ("redis-exporter", 9121),
        "postgres": ("postgres-exporter", 9187),
        "node": ("node-exporter", 9100),
        "cadvisor": ("cadvisor", 8080),
    }
    for job, (service, port) in expected.items():
        assert service in SERVICES, service
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port and sd["type"] == "A"
        assert jobs[job]["file_sd_configs"], f"{job}: no targets hook for the local launcher"
        # Prometheus can reach it: they share a network.
        assert set(SERVICES[service]["networks"]) & set(prom["networks"]), service
    assert jobs["api"]["metrics_path"] == "/metrics"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"--port", "8000"' in dockerfile
    assert "--web.listen-address=:9113" not in RAW_TEXT  # exporter on its default port


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make deps` installs Prometheus (Debian package)"
    done = subprocess.run(
        [promtool, "check", "config", str(ROOT / "monitoring/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_grafana_provisioning() -> None:
    grafana = SERVICES["grafana"]
    assert ("./monitoring/grafana/provisioning", "/etc/grafana/provisioning", True) in (
        _volumes(grafana)
    )
    base = ROOT / "monitoring/grafana/provisioning"
    (source,) = yaml.safe_load((base / "datasources/prometheus.yaml").read_text())["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert set(grafana["networks"]) & set(SERVICES["prometheus"]["networks"])
    (provider,) = yaml.safe_load((base / "dashboards/dashboards.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/etc/grafana/provisioning/")
    assert (base / path.removeprefix("/etc/grafana/provisioning/")).is_dir()
    for dashboard in (base / "dashboards").glob("*.json"):
        data = json.loads(dashboard.read_text())
        assert data.get("uid"), f"{dashboard.name} has no uid"


# ---------------------------------------------------------------------------------------------
# the image


def _stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """The Dockerfile's stages: name -> (what it is FROM, its instructions)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())  # continuation lines
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        op, args = line.split(None, 1)
        if op == "FROM":
            image, _, name = args.partition(" AS ")
            stages[name] = (image, [])
        else:
            stages[next(reversed(stages))][1].append((op, args))
    return stages


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages()
    assert {name: image for name, (image, _) in stages.items()} == {
        "base": "python:3.11.13-slim-bookworm",
        "seeder": "base",
        "api": "base",
    }
    assert list(stages)[-1] == "api", "a plain `docker build .` must give the API's image"
    base = stages["base"][1]
    # Dependencies are installed from pyproject.toml alone, before any code is copied.
    assert [args for op, args in base if op == "COPY"] == ["pyproject.toml ./"]
    assert any(op == "RUN" and "pip install" in args for op, args in base)
    for name in ("seeder", "api"):
        ops = stages[name][1]
        users = [args for op, args in ops if op == "USER"]
        assert users and users[-1].split(":")[0] not in {"0", "root"}, name
    api, seeder = stages["api"][1], stages["seeder"][1]
    # The API's image has core and api, and neither the seeder nor its extra (faker).
    assert [args for op, args in api if op == "COPY"] == ["core ./core", "api ./api"]
    assert not any(op == "RUN" for op, _ in api)
    assert [args for op, args in seeder if op == "COPY"] == ["core ./core", "seeder ./seeder"]
    assert "['optional-dependencies']['seeder']" in next(a for op, a in seeder if op == "RUN")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("faker") for d in extras["dependencies"])
    assert any(d.startswith("faker") for d in extras["optional-dependencies"]["seeder"])
    cmd = json.loads(next(args for op, args in api if op == "CMD"))
    assert cmd[:5] == ["granian", "--interface", "asgi", "--factory", "api.app:create_app"]
    for flag in ("--no-ws", "uvloop", "0.0.0.0"):
        assert flag in cmd
    assert json.loads(next(args for op, args in seeder if op == "CMD")) == ["surge-seed"]
    # No secrets, no package index named.
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"(?i)password|secret|token|index-url|://", code)


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    text = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+)", text, re.M))
    assert copied <= allowed
    for name in allowed:
        assert (ROOT / name).exists(), name
