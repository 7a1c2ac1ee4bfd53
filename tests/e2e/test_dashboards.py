"""Grafana dashboards (monitoring/grafana/provisioning/dashboards/*.json): structure, PromQL, data.

Grafana cannot run here, so the dashboards are tested for what would go wrong in it:

- structure: every file parses, has a readable unique uid, is where the compose mount and the
  provider put Grafana's eyes, and every panel has a title, a grid position, a unique id and a
  query on the `prometheus` datasource; the JSON is what build_dashboards.py writes.
- PromQL: every query (variables expanded as Grafana would) is accepted by a real Prometheus
  (/usr/bin/prometheus; a parse error comes back as status "error", errorType "bad_data").
- data: a stack of real processes on free loopback ports (Postgres, Redis, 2 API replicas,
  nginx with its access log, mtail reading it, the Debian node/nginx/redis/postgres exporters
  and Prometheus configured from
  monitoring/prometheus/prometheus.yml with a 1 s scrape interval), a short k6 run pushing its
  metrics by remote write, then every panel query must return data. The only exemption: the
  cadvisor panels (COMPOSE_ONLY), which have data only under docker compose.

Waits poll with deadlines; no fixed sleeps. About 20 s, most of it the stack and the 6 s k6 run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from stack.mtail import mtail_command
from stack.nginx import NginxServer, local_values
from stack.servers import HOST, free_port, granian_command, wait_for

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus" / "prometheus.yml"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check = _load("surge_check_dashboards", MONITORING / "check_dashboards.py")
build = _load("surge_build_dashboards", MONITORING / "grafana" / "build_dashboards.py")

DASHBOARDS = check.load_dashboards()
EXPECTED = {
    "surge-overview",
    "surge-nginx",
    "surge-redis",
    "surge-postgres",
    "surge-host",
    "surge-k6",
}

COMPOSE_ONLY = {
    ("surge-host", "Container CPU"),
    ("surge-host", "Container memory (working set)"),
    ("surge-host", "Container network bytes/s"),
}
"""Panels allowed to be empty here: cadvisor's container_* metrics, which exist only under
docker compose (cadvisor needs Docker). They sit in the collapsed row "containers (docker
compose only)"."""

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
EXPORTERS = {
    "node": "prometheus-node-exporter",
    "nginx": "prometheus-nginx-exporter",
    "redis": "prometheus-redis-exporter",
    "postgres": "prometheus-postgres-exporter",
}
K6 = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
K6_TREND_STATS = "p(50),p(95),p(99),avg,max"
REPLICAS = 2
DATA_DEADLINE = 45.0


# ------------------------------------------------------------------------------------------
# structure


def test_the_six_dashboards_exist_with_readable_uids() -> None:
    assert {d["uid"] for d in DASHBOARDS.values()} == EXPECTED
    for name, dash in DASHBOARDS.items():
        assert name == f"{dash['uid']}.json"
        assert 36 <= dash["schemaVersion"] <= 41, name


def test_structure_is_valid() -> None:
    assert check.structural_problems(DASHBOARDS) == []


def test_structure_check_catches_defects() -> None:
    """The checker itself: a broken copy of a dashboard is reported, point by point."""
    dash = json.loads(json.dumps(DASHBOARDS["surge-nginx.json"]))
    first, second = dash["panels"][0], dash["panels"][1]
    second["id"] = first["id"]
    first["datasource"] = {"type": "prometheus", "uid": "other"}
    first["targets"][0]["expr"] = " "
    del second["gridPos"]
    second["title"] = ""
    second["targets"][0]["expr"] += " + on() $nope"
    problems = "\n".join(check.structural_problems({"surge-nginx.json": dash}))
    for needle in ("also used by", "'other'", "empty query", "gridPos", "no title", "$nope"):
        assert needle in problems


def test_json_is_what_the_builder_writes() -> None:
    built = build.build()
    assert sorted(built) == sorted(DASHBOARDS), "run monitoring/grafana/build_dashboards.py"
    for name, text in built.items():
        on_disk = (check.DASHBOARD_DIR / name).read_text(encoding="utf-8")
        assert on_disk == text, f"{name} is stale: run monitoring/grafana/build_dashboards.py"


def test_grafana_finds_the_files_under_compose() -> None:
    """compose mounts the provisioning tree where the provider's path points."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    provider = yaml.safe_load((check.DASHBOARD_DIR / "dashboards.yaml").read_text(encoding="utf-8"))
    path = Path(provider["providers"][0]["options"]["path"])
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./") and path.is_relative_to(target):
            host_dir = (ROOT / source).resolve() / path.relative_to(target)
            assert host_dir == check.DASHBOARD_DIR
            break
    else:
        pytest.fail(f"no grafana volume holds the provider's path {path}")
    datasource = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert [d["uid"] for d in datasource["datasources"]] == [check.DATASOURCE_UID]


def test_panels_have_units_and_descriptions_where_numbers_need_them() -> None:
    for dash in DASHBOARDS.values():
        for panel, _row in check.query_panels(dash):
            if panel["type"] in ("timeseries", "stat"):
                assert panel["fieldConfig"]["defaults"].get("unit"), (dash["uid"], panel["title"])


def test_variables_default_to_all_and_are_used() -> None:
    for dash in DASHBOARDS.values():
        exprs = " ".join(
            t["expr"] for panel, _ in check.query_panels(dash) for t in panel["targets"]
        )
        for var in dash["templating"]["list"]:
            assert var["includeAll"] and var["allValue"], (dash["uid"], var["name"])
            assert var["current"]["value"] == ["$__all"], (dash["uid"], var["name"])
            assert f"${var['name']}" in exprs, f"{dash['uid']}: ${var['name']} is never used"


def test_the_compose_only_exemptions_are_exactly_the_cadvisor_row() -> None:
    in_row = set()
    for dash in DASHBOARDS.values():
        for panel, row in check.query_panels(dash):
            exprs = [t["expr"] for t in panel["targets"]]
            if check.is_compose_only(row):
                in_row.add((dash["uid"], panel["title"]))
                assert row["collapsed"], "compose-only panels stay folded away"
                assert all("container_" in e for e in exprs), panel["title"]
            else:
                assert not any("container_" in e for e in exprs), (dash["uid"], panel["title"])
    assert in_row == COMPOSE_ONLY


def test_variable_expansion_matches_grafana_defaults() -> None:
    dash = DASHBOARDS["surge-postgres.json"]
    expr = 'x{instance=~"$instance", datname=~"${datname}"}[$__rate_interval]'
    assert check.expand(expr, dash, rate_interval="20s") == (
        'x{instance=~".*", datname=~".+"}[20s]'
    )
    assert check.variable_query_expr("label_values(up{job='x'}, instance)") == (
        "group by (instance) (up{job='x'})"
    )


# ------------------------------------------------------------------------------------------
# processes


def _die_with_us() -> Callable[[], None] | None:
    """preexec_fn: the kernel SIGTERMs the child when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class Processes:
    """Child processes of one test module, each logging to its own file, all stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{name}.log").open("wb")
        preexec = _die_with_us()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=preexec, **kwargs,
        )  # fmt: skip
        log.close()
        self.children[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def wait_http(self, name: str, url: str, timeout: float = 30.0) -> None:
        proc = self.children[name]
        wait_for(
            lambda: _http_ok(url),
            timeout=timeout,
            what=f"{name} ({url})",
            alive=lambda: proc.poll() is None,
            on_death=lambda: "\n" + self.log(name),
        )

    def stop_all(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def start_prometheus(
    procs: Processes,
    name: str,
    config: dict[str, Any],
    *,
    port: int | None = None,
    remote_write: bool = False,
) -> str:
    """/usr/bin/prometheus on 127.0.0.1 with this config; returns its URL once ready."""
    directory = procs.directory / name
    directory.mkdir()
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = port or free_port()
    cmd = [
        PROMETHEUS,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address={HOST}:{port}",
    ]
    if remote_write:  # what k6 -o experimental-prometheus-rw writes to
        cmd.append("--web.enable-remote-write-receiver")
    procs.start(name, cmd, cwd=directory)
    url = f"http://{HOST}:{port}"
    procs.wait_http(name, f"{url}/-/ready")
    return url


def local_prometheus_config(targets_dir: Path, targets: dict[str, list[str]]) -> dict[str, Any]:
    """monitoring/prometheus/prometheus.yml as the local launcher uses it (file_sd target files
    in targets/, no DNS discovery), but scraping every second so rates have points at once."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    targets_dir.mkdir(exist_ok=True)
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job.pop("static_configs", None)
        job["file_sd_configs"] = [{"files": [str(targets_dir / f"{job['job_name']}.json")]}]
        if job["job_name"] in targets:
            path = targets_dir / f"{job['job_name']}.json"
            path.write_text(json.dumps([{"targets": targets[job["job_name"]]}]), encoding="utf-8")
    missing = set(targets) - {job["job_name"] for job in config["scrape_configs"]}
    assert not missing, f"prometheus.yml has no job for {missing}"
    return config


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    processes = Processes(tmp_path_factory.mktemp("dashboards"))
    yield processes
    processes.stop_all()


@pytest.fixture(scope="module")
def bare_prometheus(procs: Processes) -> str:
    """A Prometheus with nothing to scrape: enough to parse queries."""
    return start_prometheus(procs, "prometheus-bare", {"global": {}, "scrape_configs": []})


def test_every_query_parses_in_prometheus(bare_prometheus: str) -> None:
    queries = check.all_queries(DASHBOARDS.values())
    assert len(queries) > 100
    errors = check.query_errors(bare_prometheus, queries)
    assert errors == []
    # and the check sees a parse error when there is one
    broken = check.query_errors(bare_prometheus, [("d", "p", "sum(rate(x[1m])")])
    assert len(broken) == 1 and "bad_data" in broken[0][3]


# ------------------------------------------------------------------------------------------
# live: the stack, a k6 run, every panel with data

K6_SCRIPT = """
import http from 'k6/http';
import { check, sleep } from 'k6';

export const options = {
  scenarios: { dashboards: { executor: 'constant-vus', vus: 4, duration: '6s' } },
};
http.setResponseCallback(http.expectedStatuses(200, 404));

const KINDS = [
  ['student', () => `/students/${10000 + Math.floor(Math.random() * __ENV.STUDENTS)}`],
  ['unknown student', () => `/students/${900000000 + Math.floor(Math.random() * 50)}`],
  ['unknown booking', () => '/bookings/00000000-0000-4000-8000-000000000000'],
  ['malformed', () => '/students/not-a-number'],
  ['not a route', () => '/nope'],
];

export default function () {
  for (const [name, path] of KINDS) {
    const res = http.get(`${__ENV.BASE_URL}${path()}`, { tags: { name } });
    check(res, { 'answered': (r) => [200, 400, 404].includes(r.status) });
  }
  sleep(0.05);
}
"""


@pytest.fixture(scope="module")
def live_prometheus(procs: Processes, settings: Any, seeded: Any) -> Iterator[str]:
    """Prometheus on a free port scraping a whole local stack, after a k6 run pushed into it."""
    for program in (PROMETHEUS, K6, *EXPORTERS.values()):
        if not shutil.which(program) and not os.access(program, os.X_OK):
            pytest.fail(f"{program} is missing: run `make deps`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env |= {
        "SURGE_DATABASE_URL": settings.stores.database_url,
        "SURGE_REDIS_URL": settings.stores.redis_url,
        "SURGE_STUDENTS": str(settings.dataset.students),
        "SURGE_BOOKINGS": str(settings.dataset.bookings),
        # The store panels need store calls: with their own copies on, the replicas would
        # answer every lookup of this small dataset from memory.
        "SURGE_LOCAL_CACHE_MB": "0",
    }
    replica_ports = [free_port() for _ in range(REPLICAS)]
    for n, port in enumerate(replica_ports, 1):
        procs.start(f"api-{n}", granian_command("api.app:create_app", port, 64), cwd=ROOT, env=env)

    nginx_dir = procs.directory / "nginx"
    nginx = NginxServer(
        nginx_dir,
        local_values(
            nginx_dir, port=free_port(), status_port=free_port(),
            upstream_ports=replica_ports, environ={}, SURGE_RATE_LIMIT="off",
            SURGE_NGINX_ACCESS_LOG="on",
        ),
    )  # fmt: skip

    ports = {job: free_port() for job in EXPORTERS}
    listen = {job: f"{HOST}:{port}" for job, port in ports.items()}
    procs.start("node-exporter", [EXPORTERS["node"], f"--web.listen-address={listen['node']}"])
    procs.start(
        "redis-exporter",
        [EXPORTERS["redis"], "-redis.addr", settings.stores.redis_url.rsplit("/", 1)[0],
         "-web.listen-address", listen["redis"]],
    )  # fmt: skip
    dsn = settings.stores.database_url + ("&" if "?" in settings.stores.database_url else "?")
    procs.start(
        "postgres-exporter",
        [EXPORTERS["postgres"], f"--web.listen-address={listen['postgres']}"],
        env={**env, "DATA_SOURCE_NAME": dsn + "sslmode=disable"},
    )
    for n, port in enumerate(replica_ports, 1):
        procs.wait_http(f"api-{n}", f"http://{HOST}:{port}/ready")
    nginx.start()
    try:
        procs.start(
            "nginx-exporter",
            [EXPORTERS["nginx"], "-nginx.scrape-uri", nginx.status_url,
             "-web.listen-address", listen["nginx"]],
        )  # fmt: skip
        listen["mtail"] = f"{HOST}:{free_port()}"
        log = Path(nginx.values["SURGE_NGINX_ACCESS_LOG_PATH"])
        procs.start("mtail", mtail_command(log, HOST, int(listen["mtail"].rsplit(":")[1])))
        for job in (*EXPORTERS, "mtail"):
            name = job if job == "mtail" else f"{job}-exporter"
            procs.wait_http(name, f"http://{listen[job]}/metrics")

        prometheus_port = free_port()
        config = local_prometheus_config(
            procs.directory / "targets",
            {
                "prometheus": [f"{HOST}:{prometheus_port}"],
                "api": [f"{HOST}:{p}" for p in replica_ports],
                **{job: [address] for job, address in listen.items()},
            },
        )
        url = start_prometheus(
            procs, "prometheus-live", config, port=prometheus_port, remote_write=True
        )
        wait_for(
            lambda: _all_targets_up(url, expected=len(replica_ports) + len(listen) + 1),
            timeout=30,
            what="every scrape target up",
        )
        _run_k6(procs.directory, nginx.url, url, settings.dataset.students)
        yield url
    finally:
        nginx.stop()


def _all_targets_up(url: str, expected: int) -> bool:
    try:
        active = _get_json(f"{url}/api/v1/targets?state=active")["data"]["activeTargets"]
    except (OSError, ValueError):
        return False
    return len(active) == expected and all(t["health"] == "up" for t in active)


def _run_k6(directory: Path, base_url: str, prometheus_url: str, students: int) -> None:
    script = directory / "dashboards.js"
    script.write_text(K6_SCRIPT, encoding="utf-8")
    env = {
        **os.environ,
        "BASE_URL": base_url,
        "STUDENTS": str(students),
        "K6_PROMETHEUS_RW_SERVER_URL": f"{prometheus_url}/api/v1/write",
        "K6_PROMETHEUS_RW_TREND_STATS": K6_TREND_STATS,
        "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
        "K6_NO_USAGE_REPORT": "true",
    }
    done = subprocess.run(
        [K6, "run", "--quiet", "--no-color", "-o", "experimental-prometheus-rw", str(script)],
        env=env, cwd=directory, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_every_panel_query_returns_data(live_prometheus: str) -> None:
    """A panel that would show nothing is a defect; only COMPOSE_ONLY may be empty here."""
    deadline = time.monotonic() + DATA_DEADLINE
    while True:
        missing = check.panel_queries_without_data(live_prometheus, DASHBOARDS)
        unexpected = [m for m in missing if (m.dashboard, m.panel) not in COMPOSE_ONLY]
        if not unexpected or time.monotonic() > deadline:
            break
        time.sleep(1)  # scrapes every second: the next round sees new points
    report = "\n".join(f"{m.dashboard} / {m.panel}:\n    {m.expr}" for m in unexpected)
    assert not unexpected, f"{len(unexpected)} queries without data:\n{report}"
    # the exempt panels are empty for the stated reason, not because they are broken
    exempt = {(m.dashboard, m.panel) for m in missing}
    assert exempt == COMPOSE_ONLY


def test_the_check_reports_a_query_without_data(live_prometheus: str) -> None:
    dash = json.loads(json.dumps(DASHBOARDS["surge-nginx.json"]))
    dash["panels"] = dash["panels"][:1]
    dash["panels"][0]["targets"][0]["expr"] = "nginx_no_such_metric"
    dash["panels"][0]["targets"].append(
        dash["panels"][0]["targets"][0] | {"expr": "histogram_quantile(0.9, rate(x_bucket[1m]))"}
    )
    dash["templating"]["list"] = []
    missing = check.panel_queries_without_data(live_prometheus, [dash])
    assert [m.expr for m in missing] == [
        "nginx_no_such_metric",
        "histogram_quantile(0.9, rate(x_bucket[1m]))",
    ]


def test_the_script_passes_against_the_live_stack(live_prometheus: str) -> None:
    done = subprocess.run(
        [sys.executable, str(MONITORING / "check_dashboards.py"),
         "--prometheus", live_prometheus, "--skip-compose-only"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(compose-only panels skipped)" in done.stdout
