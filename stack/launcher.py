"""The local topology as processes (what `python -m stack up|down|status|restart` runs).

    Postgres, Redis ── seeder (once) ── api-1..N: Granian on 127.0.0.1:API_PORT_BASE+n
                                              ▲ least_conn, keep-alive, GET retried
                                  nginx on 127.0.0.1:HTTP_PORT (stub_status on NGINX_STATUS_PORT)
    Prometheus on 127.0.0.1:PROMETHEUS_PORT ◄── replicas' /metrics and the exporters
                                                (node, nginx, redis, postgres: Debian packages)

The config files are the ones compose.yaml uses: nginx/nginx.conf.template (rendered by
stack.nginx) and monitoring/prometheus/prometheus.yml, copied as it is; the local addresses go
into the file_sd target files it reads from targets/ beside the copy.

Every process is a program of one supervisord (stack.supervisor), whose config `up` writes to
RUN/supervisor/: it restarts whatever exits (a replica SIGKILLed is serving again within about
two seconds), gives up on a program that keeps failing at start (`status` says so), and `down`
stops exactly its programs, kind by kind, before it exits itself. What supervisord cannot do
stays here: rendering configs, the order (stores, seed, keeper, replicas, nginx, monitoring),
readiness waits (polled until each answers, never a fixed sleep) and rolling restarts.

Where and on which ports is Layout (env: SURGE_RUN_DIR, SURGE_HTTP_PORT, ...): the defaults are
the documented ones (8080, 9090, ./.run); the tests and benchmarks use a temp dir and free ports.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from stack.nginx import SERVER_PARAMS, NginxServer, local_values
from stack.servers import (
    HOST,
    PostgresServer,
    RedisClusterServer,
    RedisServer,
    ServerError,
    StandbyServer,
    ensure_port_free,
    free_port_block,
    granian_command,
    log_tail,
    wait_for,
)
from stack.supervisor import RUNNING_STATES, Program, Supervisor, group_pids


def _root() -> Path:
    """The checkout: where pyproject.toml is (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


ROOT = _root()
COMPOSE_FILE = ROOT / "compose.yaml"
PROMETHEUS_CONFIG = ROOT / "monitoring" / "prometheus" / "prometheus.yml"
READY_TIMEOUT = 60.0
REPLICA_STOP_TIMEOUT = 20.0
"""Granian's own bound (stack.servers.GRANIAN_STOP_TIMEOUT) plus its shutdown steps."""
MAX_REPLICAS = 32
KEEPER = "redis-keeper"
KEEPER_INTERVAL_S = 2.0

REDIS_MAXMEMORY = "3gb"
"""Redis's memory cap (SURGE_REDIS_MAXMEMORY; compose.yaml has the same default): the default
dataset takes ~0.7 GB, and a reseed fills a second version beside the live one."""
REDIS_MAXMEMORY_POLICY = "noeviction"
"""Full means refusing writes, never evicting: the seeded records all stay (an evicted one would
be a Postgres read on every lookup), and a refused write-back costs the request nothing."""

_FAIL_TIMEOUT = re.search(r"fail_timeout=(\d+)s", SERVER_PARAMS)
NGINX_FAIL_TIMEOUT = float(_FAIL_TIMEOUT.group(1)) if _FAIL_TIMEOUT else 10.0
"""How long nginx leaves out an upstream server that failed (stack.nginx.SERVER_PARAMS; 10 s
is nginx's own default)."""


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# where things live


@dataclass(frozen=True)
class Layout:
    """The run directory and every port of the local stack. Each field but `run` is read from
    SURGE_<FIELD> (SURGE_HTTP_PORT, SURGE_PROMETHEUS_PORT, ...); `run` from SURGE_RUN_DIR."""

    run: Path
    """Data, logs, supervisord's config and socket, rendered configs (default: ./.run)."""
    http_port: int = 8080
    """nginx, the public entry."""
    nginx_status_port: int = 8081
    """nginx's stub_status, for the exporter only."""
    prometheus_port: int = 9090
    pg_port: int = 5432
    pg_standby_port: int = 5433
    """The streaming standby's, with SURGE_POSTGRES_STANDBY=1."""
    redis_port: int = 6379
    api_port_base: int = 8000
    """Replica n listens on api_port_base + n."""
    node_exporter_port: int = 9100
    nginx_exporter_port: int = 9113
    redis_exporter_port: int = 9121
    postgres_exporter_port: int = 9187

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Layout:
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            if f.name == "run":
                continue
            name = env_name(f.name)
            raw = env.get(name, "").strip()
            if not raw:
                continue
            port = int(raw) if raw.isdigit() else 0
            if not 1 <= port <= 65535:
                raise ServerError(f"{name} must be a TCP port number, not {raw!r}")
            values[f.name] = port
        run = env.get("SURGE_RUN_DIR", "").strip()
        layout = cls(run=Path(run).absolute() if run else ROOT / ".run", **values)
        if layout.api_port_base + MAX_REPLICAS > 65535:
            raise ServerError("SURGE_API_PORT_BASE leaves no room for the replicas' ports")
        return layout

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def supervisor_dir(self) -> Path:
        return self.run / "supervisor"

    @property
    def nginx_prefix(self) -> Path:
        return self.run / "nginx"

    @property
    def prometheus_dir(self) -> Path:
        return self.run / "prometheus"

    def replica_port(self, n: int) -> int:
        return self.api_port_base + n


def spare_env(run: Path, replicas: int = MAX_REPLICAS) -> dict[str, str]:
    """SURGE_RUN_DIR and every port variable for a stack of its own (tests, benchmarks): one
    block of free ports below the ephemeral range, room for `replicas` replicas."""
    names = [f.name for f in fields(Layout) if f.name not in ("run", "api_port_base")]
    base = free_port_block(len(names) + replicas)
    env = {env_name(name): str(base + i) for i, name in enumerate(names)}
    env[env_name("api_port_base")] = str(base + len(names) - 1)  # replica n: base+len-1+n
    env["SURGE_RUN_DIR"] = str(run)
    return env


def env_name(field_name: str) -> str:
    return "SURGE_RUN_DIR" if field_name == "run" else f"SURGE_{field_name.upper()}"


def default_replicas() -> int:
    """SURGE_REPLICAS's default: the `${SURGE_REPLICAS:-N}` in compose.yaml, so that both
    launchers start the same number (chosen by measurement: docs/benchmarks/replicas-*.md)."""
    try:
        text = COMPOSE_FILE.read_text(encoding="utf-8")
    except OSError:
        raise ServerError(f"{COMPOSE_FILE} not found: set SURGE_REPLICAS") from None
    match = re.search(r"\$\{SURGE_REPLICAS:-(\d+)\}", text)
    if match is None:
        raise ServerError(f"no ${{SURGE_REPLICAS:-N}} default in {COMPOSE_FILE}")
    return int(match.group(1))


def replica_count(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get("SURGE_REPLICAS", "").strip()
    if not raw:
        return default_replicas()
    n = int(raw) if raw.isdigit() else 0
    if not 1 <= n <= MAX_REPLICAS:
        raise ServerError(
            f"SURGE_REPLICAS must be a whole number from 1 to {MAX_REPLICAS}, not {raw!r}"
        )
    return n


def monitoring_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """SURGE_MONITORING=off skips Prometheus and the exporters (benchmarks of the data path)."""
    env = os.environ if environ is None else environ
    return env.get("SURGE_MONITORING", "on").strip().lower() not in ("off", "0", "false", "no")


def replica_name(n: int) -> str:
    return f"api-{n}"


def replica_number(name: str) -> int | None:
    match = re.fullmatch(r"api-(\d+)", name)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# small helpers


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def find_program(name: str, package: str) -> str:
    """A server program by name: PATH, then the sbin/bin directories a user's PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerError(
        f"{name} not found: run `make deps` (Debian/Ubuntu package {package}), or put it on PATH"
    )


def _with_query(url: str, param: str) -> str:
    return url + ("&" if "?" in url else "?") + param


@dataclass(frozen=True)
class Exporter:
    job: str
    """Its job in prometheus.yml; its targets file is targets/<job>.json."""

    @property
    def name(self) -> str:
        """As compose names the service (and our pid and log files)."""
        return f"{self.job}-exporter"

    @property
    def program(self) -> str:
        """Debian's program, and its package."""
        return f"prometheus-{self.job}-exporter"

    @property
    def port_field(self) -> str:
        return f"{self.job}_exporter_port"


EXPORTERS = tuple(Exporter(job) for job in ("node", "nginx", "redis", "postgres"))


# --------------------------------------------------------------------------------------------
# the stack

PRIORITY = {
    "postgres": 10, "postgres-standby": 15, "redis": 20, "redis-keeper": 30, "api": 40,
    "exporter": 50, "prometheus": 60, "nginx": 70,
}  # fmt: skip
"""supervisord's order: the stores start first; `down` stops the entry first (no new
requests), then monitoring, the replicas and the keeper, the stores last."""
REPLICA_START_SECS = 3
"""A replica that exits sooner than this after a start counted as a failed try..."""
REPLICA_START_RETRIES = 3
"""... and after this many in a row supervisord gives up on it (FATAL in `make status`)."""


CLUSTER_NODE_PREFIX = "redis-node-"
"""Program names of the Redis Cluster's nodes (redis-node-1 on SURGE_REDIS_PORT, ...)."""
CLUSTER_NODE_TIMEOUT_MS = 5000
"""cluster-node-timeout of `make up`'s cluster: a master silent this long is failed over."""


def _kind(name: str) -> str:
    if name.endswith("-exporter"):
        return "exporter"
    if name.startswith(CLUSTER_NODE_PREFIX):
        return "redis"
    if replica_number(name) is not None:
        return "api"
    return name


@dataclass(frozen=True)
class Process:
    """One supervised process as `status` (and the tests and benchmarks) see it."""

    name: str
    state: str
    """supervisord's: STARTING, RUNNING, BACKOFF, STOPPED, EXITED, FATAL (given up)."""
    pid: int | None
    port: int
    description: str

    @property
    def live(self) -> bool:
        return self.state in RUNNING_STATES and self.pid is not None


def _postgres_program(name: str, server: PostgresServer, command: list[str]) -> Program:
    """A Postgres cluster (the primary or its standby) as a supervisord program."""
    return Program(
        name,
        command,
        PRIORITY[name],
        server.port,
        environment=server.environment,
        user=server.system_user,
        stop_signal="INT",  # fast shutdown: sessions rolled back, a checkpoint
        stop_wait_s=30,
        start_secs=2,
    )


class Stack:
    """One local stack: its layout, its supervisord, and the environment its processes get."""

    def __init__(
        self, layout: Layout | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.layout = layout or Layout.from_env(self.environ)
        self.supervisor = Supervisor(self.layout.supervisor_dir, self.layout.logs)

    # -- pieces -----------------------------------------------------------------------------

    def postgres(self) -> PostgresServer:
        run = self.layout.run
        return PostgresServer(
            run / "postgres",
            self.layout.pg_port,
            run / "sock",
            log_file=self.layout.logs / "postgres.log",
            detached=True,
        )

    def standby(self) -> StandbyServer:
        run = self.layout.run
        return self.postgres().standby(
            run / "postgres-standby",
            self.layout.pg_standby_port,
            run / "sock",
            log_file=self.layout.logs / "postgres-standby.log",
        )

    def redis(self) -> RedisServer:
        return RedisServer(
            self.layout.run / "redis",
            self.layout.redis_port,
            persist=True,
            log_file=self.layout.logs / "redis.log",
            detached=True,
            config={
                "maxmemory": self.environ.get("SURGE_REDIS_MAXMEMORY") or REDIS_MAXMEMORY,
                "maxmemory-policy": REDIS_MAXMEMORY_POLICY,
            },
        )

    def cluster_mode(self) -> bool:
        """SURGE_REDIS_MODE=cluster: Redis is a Redis Cluster (ours: SURGE_REDIS_NODES masters
        with a replica each, on the ports from SURGE_REDIS_PORT). A bad mode is refused here."""
        from api.settings import Settings

        return Settings.from_env(self.environ).cluster

    def redis_cluster(self) -> RedisClusterServer:
        from api.settings import Settings

        return RedisClusterServer(
            self.layout.run / "redis-cluster",
            self.layout.redis_port,
            masters=Settings.from_env(self.environ).redis_nodes,
            node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS,
            persist=True,
            config={
                "maxmemory": self.environ.get("SURGE_REDIS_MAXMEMORY") or REDIS_MAXMEMORY,
                "maxmemory-policy": REDIS_MAXMEMORY_POLICY,
            },
            log_dir=self.layout.logs,
            detached=True,
        )

    def redis_programs(self) -> list[tuple[str, RedisServer]]:
        """(program name, server) of each Redis this stack runs: one, or each cluster node."""
        if self.cluster_mode():
            nodes = self.redis_cluster().nodes
            return [(f"{CLUSTER_NODE_PREFIX}{n}", node) for n, node in enumerate(nodes, 1)]
        return [("redis", self.redis())]

    def nginx_values(self, ports: Iterable[int], **knobs: str) -> dict[str, str]:
        """The template's values for the replicas on `ports`: knobs (SURGE_RATE_LIMIT, ...)
        from the environment, then `knobs` (full placeholder names)."""
        return local_values(
            self.layout.nginx_prefix,
            port=self.layout.http_port,
            status_port=self.layout.nginx_status_port,
            upstream_ports=list(ports),
            environ=self.environ,
            **knobs,
        )

    @property
    def _nginx_values_file(self) -> Path:
        return self.layout.nginx_prefix / "values.json"

    def saved_nginx_values(self) -> dict[str, str] | None:
        """The values the running nginx was last rendered with (knobs as `up` was given them)."""
        try:
            values = json.loads(self._nginx_values_file.read_text())
        except (OSError, ValueError):
            return None
        return values if isinstance(values, dict) else None

    def nginx(self, values: Mapping[str, str] | None = None) -> NginxServer:
        fallback = self.nginx_values([self.layout.replica_port(1)])  # enough to find its pid
        values = values or self.saved_nginx_values() or fallback
        return NginxServer(self.layout.nginx_prefix, values)

    def _own_postgres(self) -> bool:
        return not self.environ.get("SURGE_DATABASE_URL")

    def _own_standby(self) -> bool:
        """SURGE_POSTGRES_STANDBY=1: a streaming standby of our Postgres serves the fallback
        reads (with SURGE_DATABASE_URL, point SURGE_DATABASE_READ_URL at yours instead)."""
        wanted = self.environ.get("SURGE_POSTGRES_STANDBY", "").strip().lower()
        return self._own_postgres() and wanted in ("1", "on", "true", "yes")

    def _own_redis(self) -> bool:
        return not self.environ.get("SURGE_REDIS_URL")

    def store_env(self) -> dict[str, str]:
        """Our environment with the URLs of the stores this stack runs itself."""
        env = dict(self.environ)
        if self._own_postgres():
            env["SURGE_DATABASE_URL"] = self.postgres().url
        if self._own_standby():
            env["SURGE_DATABASE_READ_URL"] = self.standby().url
        if self._own_redis():
            own = self.redis_cluster() if self.cluster_mode() else self.redis()
            env["SURGE_REDIS_URL"] = own.url
        return env

    # -- the programs -----------------------------------------------------------------------

    def programs(self, env: Mapping[str, str], n_replicas: int, monitoring: bool) -> list[Program]:
        """Everything this stack runs, as supervisord programs (prepares the stores' dirs)."""
        from api.settings import Settings
        from api.settings import env_name as setting_name

        layout = self.layout
        # Only what the replicas and the seeder read: a launcher knob (SURGE_REPLICAS, a port)
        # changing must not count as their settings changing, which restarts them.
        read = {setting_name(f.name) for f in fields(Settings)}
        surge = {k: v for k, v in env.items() if k in read}
        progs: list[Program] = []
        if self._own_postgres():
            pg = self.postgres()
            progs.append(_postgres_program("postgres", pg, pg.prepare()))
        if self._own_standby():
            sb = self.standby()
            progs.append(_postgres_program("postgres-standby", sb, sb.command()))
        if self._own_redis():
            for name, rd in self.redis_programs():
                progs.append(
                    Program(
                        name,
                        rd.command(),
                        PRIORITY["redis"],
                        rd.port,
                        directory=rd.dir,
                        stop_wait_s=60,  # SIGTERM saves the dataset first (a second or two)
                    )
                )
            # SCHED_IDLE: a refill under load runs on the CPU the replicas leave idle.
            keeper = ["chrt", "--idle", "0", sys.executable, "-m", "seeder", "--watch",
                      str(KEEPER_INTERVAL_S)]  # fmt: skip
            progs.append(
                Program(KEEPER, keeper, PRIORITY[KEEPER], environment=surge, directory=ROOT)
            )
        backpressure = Settings.from_env(dict(env)).redis_pool_size
        for n in range(1, n_replicas + 1):
            port = layout.replica_port(n)
            progs.append(
                Program(
                    replica_name(n),
                    granian_command("api.app:create_app", port, backpressure),
                    PRIORITY["api"],
                    port,
                    environment=surge,
                    directory=ROOT,
                    stop_wait_s=int(REPLICA_STOP_TIMEOUT),
                    start_secs=REPLICA_START_SECS,
                    start_retries=REPLICA_START_RETRIES,
                )
            )
        nginx = self.nginx().argv()  # the command names the config file, not its contents
        progs.append(
            Program(
                "nginx",
                nginx,
                PRIORITY["nginx"],
                layout.http_port,
                stop_signal="QUIT",  # graceful: stops accepting, in-flight requests finish
                stop_wait_s=15,
            )
        )
        if monitoring:
            for exp in EXPORTERS:
                exp_env = {}
                if exp.name == "postgres-exporter":
                    exp_env["DATA_SOURCE_NAME"] = _with_query(
                        env["SURGE_DATABASE_URL"], "sslmode=disable"
                    )
                progs.append(
                    Program(
                        exp.name,
                        self._exporter_command(exp, env),
                        PRIORITY["exporter"],
                        getattr(layout, exp.port_field),
                        environment=exp_env,
                    )
                )
            progs.append(
                Program(
                    "prometheus",
                    self._prometheus_command(),
                    PRIORITY["prometheus"],
                    layout.prometheus_port,
                )
            )
        return progs

    def _port_of(self, name: str) -> int:
        layout = self.layout
        n = replica_number(name)
        if n is not None:
            return layout.replica_port(n)
        if name.startswith(CLUSTER_NODE_PREFIX):
            return layout.redis_port + int(name.removeprefix(CLUSTER_NODE_PREFIX)) - 1
        ports: dict[str, int] = {
            "postgres": layout.pg_port,
            "postgres-standby": layout.pg_standby_port,
            "redis": layout.redis_port,
            "nginx": layout.http_port,
            "prometheus": layout.prometheus_port,
            **{e.name: getattr(layout, e.port_field) for e in EXPORTERS},
        }
        return ports.get(name, 0)

    def processes(self) -> list[Process]:
        """What supervisord runs for this stack, in start order (empty when it is not up)."""
        procs = [
            Process(
                str(i["name"]),
                str(i["statename"]),
                int(i["pid"]) or None,
                self._port_of(str(i["name"])),
                str(i["description"]),
            )
            for i in self.supervisor.all_info()
        ]
        return sorted(procs, key=lambda p: (PRIORITY.get(_kind(p.name), 99), p.name))

    def process(self, name: str) -> Process | None:
        return next((p for p in self.processes() if p.name == name), None)

    def process_groups(self) -> dict[str, list[int]]:
        """Pids per live process: the program and everything in its process group."""
        return {p.name: group_pids(p.pid) for p in self.processes() if p.live and p.pid}

    def replicas(self) -> list[Process]:
        return [p for p in self.processes() if replica_number(p.name) is not None]

    # -- starting ---------------------------------------------------------------------------

    def _hint(self, variable: str) -> str:
        return f"set {variable} to another port, or run `make down` if an earlier `up` started it"

    def _preflight(self, programs: list[Program], live: set[str]) -> None:
        """Fail on a taken port before anything starts (and before minutes of seeding)."""
        variables = {
            "postgres": "SURGE_PG_PORT",
            "postgres-standby": "SURGE_PG_STANDBY_PORT",
            "redis": "SURGE_REDIS_PORT",
            "nginx": "SURGE_HTTP_PORT",
            "prometheus": "SURGE_PROMETHEUS_PORT",
            **{e.name: env_name(e.port_field) for e in EXPORTERS},
        }
        for prog in programs:
            if prog.name in live or not prog.port:
                continue
            default = "SURGE_REDIS_PORT" if _kind(prog.name) == "redis" else "SURGE_API_PORT_BASE"
            variable = variables.get(prog.name, default)
            ensure_port_free(prog.port, prog.name, self._hint(variable))
            if prog.name == "nginx":
                ensure_port_free(
                    self.layout.nginx_status_port,
                    "nginx's stub_status",
                    self._hint("SURGE_NGINX_STATUS_PORT"),
                )

    def _daemon_env(self) -> dict[str, str]:
        """supervisord's own environment, which every program inherits: the settings go to
        each program in its section instead (they change between `up`s; this does not)."""
        return {
            k: v
            for k, v in self.environ.items()
            if not k.startswith("SURGE_") and k != "DATA_SOURCE_NAME"
        }

    def _wait_ready(self, name: str, ready: Callable[[], bool], what: str) -> None:
        wait_for(
            ready,
            timeout=READY_TIMEOUT,
            what=what,
            alive=lambda: self.supervisor.state(name) in RUNNING_STATES,
            on_death=lambda: log_tail(self.layout.logs / f"{name}.log"),
            interval=0.05,
        )

    def _start(self, name: str, added: set[str], changed: set[str]) -> bool:
        """Bring one program to running under its current config: True when it (re)started."""
        sup = self.supervisor
        if name in changed:
            say(f"{name}: its settings changed; restarting it")
            sup.remove(name)
        sup.add(name)
        if sup.state(name) in ("STARTING", "RUNNING"):
            say(f"{name}: already running (pid {sup.pid_of(name)})")
            return False
        port = self._port_of(name)
        say(f"{name}: starting" + (f" on :{port}" if port else ""))
        sup.start(name)
        return True

    def _replica_ready(self, name: str) -> None:
        url = f"http://{HOST}:{self._port_of(name)}/ready"
        self._wait_ready(name, lambda: http_ok(url), f"{name} (GET {url})")
        say(f"{name}: ready")

    def up(self) -> int:
        from api.settings import Settings
        from seeder import seed

        layout = self.layout
        layout.run.mkdir(parents=True, exist_ok=True)
        layout.logs.mkdir(parents=True, exist_ok=True)
        n_replicas = replica_count(self.environ)
        monitoring = monitoring_enabled(self.environ)
        env = self.store_env()
        settings = Settings.from_env(env)
        programs = self.programs(env, n_replicas, monitoring)
        sup = self.supervisor
        live = {p.name for p in self.processes() if p.live}
        self._preflight(programs, live)
        sup.write(programs)
        if sup.running:
            added, changed, removed = sup.reload()
        else:
            say(f"supervisord: starting (config {self._rel(sup.conf)})")
            sup.start_daemon(self._daemon_env())
            added, changed, removed = set(), set(), set()
        names = {p.name for p in programs}

        if self._own_postgres():
            pg = self.postgres()
            self._start("postgres", added, changed)
            self._wait_ready("postgres", pg.ready, f"Postgres on :{pg.port}")
            pg.ensure_database()
            if self._own_standby():
                sb = self.standby()
                sb.prepare()  # on first use, a base backup of the running primary
                self._start("postgres-standby", added, changed)
                self._wait_ready("postgres-standby", sb.ready, f"the standby on :{sb.port}")
        else:
            say("Postgres: using SURGE_DATABASE_URL (not starting one)")
        if self._own_redis():
            for name, rd in self.redis_programs():
                self._start(name, added, changed)
                self._wait_ready(name, rd.ready, f"Redis on :{rd.port}")
            if self.cluster_mode():
                cluster = self.redis_cluster()
                if not cluster.created():
                    say(f"Redis Cluster: creating ({cluster.masters} masters, 1 replica each)")
                    cluster.create()
                wait_for(
                    cluster.healthy,
                    timeout=READY_TIMEOUT,
                    what=f"Redis Cluster from :{cluster.port}",
                )
                say("Redis Cluster: cluster_state:ok")
        else:
            say("Redis: using SURGE_REDIS_URL (not starting one)")

        say(f"seeding {settings.students:,} students and {settings.bookings:,} bookings")
        report = seed(settings, progress=True)
        say(f"seeded: {report}")
        if KEEPER in names:  # a Redis of its own: refilled from Postgres whenever it empties
            self._start(KEEPER, added, changed)

        replicas = [replica_name(n) for n in range(1, n_replicas + 1)]
        for name in replicas:
            if name in changed:  # one at a time: the others keep serving
                self._start(name, added, changed)
                self._replica_ready(name)
        started = [n for n in replicas if n not in changed and self._start(n, added, changed)]
        for name in started:
            self._replica_ready(name)

        self._nginx_up([layout.replica_port(n) for n in range(1, n_replicas + 1)], added, changed)
        for name in sorted(removed):  # scaled down, or monitoring turned off: after nginx
            say(f"{name}: no longer wanted; stopping it")
            sup.remove(name)
        if monitoring:
            self._monitoring_up(n_replicas, added, changed)
        self._print_urls(settings.database_url, settings.redis_url, n_replicas, monitoring)
        return 0

    def _nginx_up(self, ports: list[int], added: set[str], changed: set[str]) -> None:
        values = self.nginx_values(ports)
        server = self.nginx(values)
        if self.supervisor.state("nginx") == "RUNNING" and "nginx" not in changed:
            if self.saved_nginx_values() == values and server.conf_path.exists():
                say(f"nginx: already running on :{self.layout.http_port}")
            else:
                say("nginx: reloading (new upstreams or knobs)")
                server.reload(values)
        else:
            server.check()  # renders the config the program reads, and nginx -t
            self._start("nginx", added, changed)
        self._nginx_values_file.write_text(json.dumps(values, indent=1) + "\n")
        public = f"http://{HOST}:{self.layout.http_port}/ready"
        self._wait_ready("nginx", lambda: http_ok(public), f"nginx (GET {public})")
        say("nginx: ready")

    # -- monitoring ---------------------------------------------------------------------------

    def _write_targets(self, ports: list[int]) -> None:
        """file_sd target files for prometheus.yml's jobs (written atomically: Prometheus
        watches the directory and must never read half a file)."""
        layout = self.layout
        targets = layout.prometheus_dir / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        jobs = {
            "prometheus": [layout.prometheus_port],
            "api": ports,
            **{e.job: [getattr(layout, e.port_field)] for e in EXPORTERS},
        }
        groups: dict[str, list[dict[str, object]]] = {
            job: [{"targets": [f"{HOST}:{p}" for p in ps]}] for job, ps in jobs.items()
        }
        exporter = f"{HOST}:{layout.redis_exporter_port}"
        nodes = [node.url for _, node in self.redis_programs()] if self.cluster_mode() else []
        groups["cluster-nodes"] = [
            {"targets": [url], "labels": {"__exporter": exporter}} for url in nodes
        ]
        for job, group in groups.items():
            content = json.dumps(group, indent=1)
            path = targets / f"{job}.json"
            if path.exists() and path.read_text() == content + "\n":
                continue
            tmp = targets / f".{job}.json.tmp"
            tmp.write_text(content + "\n")
            tmp.replace(path)

    def _exporter_command(self, exp: Exporter, env: Mapping[str, str]) -> list[str]:
        layout = self.layout
        listen = f"{HOST}:{getattr(layout, exp.port_field)}"
        program = find_program(exp.program, exp.program)
        if exp.name == "node-exporter":
            cmd = [program, f"--web.listen-address={listen}"]
            if not Path("/run/systemd/system").is_dir():
                # Debian turns the systemd collector on; without systemd it fails every scrape.
                cmd.append("--no-collector.systemd")
            return cmd
        if exp.name == "nginx-exporter":
            status = f"http://{HOST}:{layout.nginx_status_port}/stub_status"
            return [program, f"-nginx.scrape-uri={status}", f"-web.listen-address={listen}"]
        if exp.name == "redis-exporter":
            cluster = ["-is-cluster"] if self.cluster_mode() else []  # every node, from the seed
            return [
                program,
                f"-redis.addr={env['SURGE_REDIS_URL']}",
                *cluster,
                f"-web.listen-address={listen}",
            ]
        return [program, f"--web.listen-address={listen}"]  # postgres: DATA_SOURCE_NAME

    def _prometheus_command(self) -> list[str]:
        prom_dir = self.layout.prometheus_dir
        retention = self.environ.get("SURGE_PROMETHEUS_RETENTION") or "7d"
        return [
            find_program("prometheus", "prometheus"),
            f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--storage.tsdb.retention.time={retention}",
            f"--web.listen-address={HOST}:{self.layout.prometheus_port}",
            # k6 writes its results here (k6 run -o experimental-prometheus-rw)
            "--web.enable-remote-write-receiver",
        ]

    def _monitoring_up(self, n_replicas: int, added: set[str], changed: set[str]) -> None:
        layout = self.layout
        prom_dir = layout.prometheus_dir
        prom_dir.mkdir(parents=True, exist_ok=True)
        self._write_targets([layout.replica_port(n) for n in range(1, n_replicas + 1)])
        config = prom_dir / "prometheus.yml"
        source = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
        config_changed = not config.exists() or config.read_text(encoding="utf-8") != source
        if config_changed:
            config.write_text(source, encoding="utf-8")
        checks = {exp.name: f"http://{HOST}:{getattr(layout, exp.port_field)}/metrics"
                  for exp in EXPORTERS}  # fmt: skip
        checks["prometheus"] = f"http://{HOST}:{layout.prometheus_port}/-/ready"
        started = [name for name in checks if self._start(name, added, changed)]
        if "prometheus" not in started and config_changed:
            say("prometheus: config changed; reloading (SIGHUP)")
            self.supervisor.signal("prometheus", "HUP")
        for name in started:
            url = checks[name]
            ready = functools.partial(http_ok, url, timeout=5)
            self._wait_ready(name, ready, f"{name} (GET {url})")
            say(f"{name}: ready")

    def _rel(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(ROOT))
        return str(path)

    def _print_urls(self, pg_url: str, redis_url: str, n_replicas: int, monitoring: bool) -> None:
        layout = self.layout
        base = f"http://{HOST}:{layout.http_port}"
        replicas = ", ".join(
            f"http://{HOST}:{layout.replica_port(n)}" for n in range(1, n_replicas + 1)
        )
        print()
        print(f"  surge is up: {base}   (nginx, {n_replicas} replica(s) behind it)")
        print(f"    try               {base}/students/10000")
        print(f"    API docs          {base}/docs")
        print(f"    replicas          {replicas}   (each: /ready, /metrics)")
        print(f"    nginx status      http://{HOST}:{layout.nginx_status_port}/stub_status")
        if monitoring:
            print(f"    Prometheus        http://{HOST}:{layout.prometheus_port}   (see /targets)")
            for exp in EXPORTERS:
                port = getattr(layout, exp.port_field)
                print(f"    {exp.name:<18}http://{HOST}:{port}/metrics")
        print(f"    Postgres          {pg_url}")
        if self._own_standby():
            print(f"    its standby       {self.standby().url}   (fallback reads)")
        print(f"    Redis             {redis_url}")
        print("  supervised by supervisord: `make status` shows each process, `make down` stops")
        print(f"  them all; logs in {self._rel(layout.logs)}/")

    # -- stopping, restarting, status --------------------------------------------------------

    def down(self) -> int:
        sup = self.supervisor
        if sup.pid is None:
            say("nothing to stop")
            return 0
        if not sup.running:
            raise ServerError(f"supervisord (pid {sup.pid}) does not answer{log_tail(sup.log)}")
        levels: dict[int, list[str]] = {}
        for proc in self.processes():
            levels.setdefault(PRIORITY.get(_kind(proc.name), 99), []).append(proc.name)
        for level in sorted(levels, reverse=True):  # one kind at a time, entry first
            live = [p.name for p in self.processes() if p.name in levels[level] and p.live]
            for name in live:
                say(f"{name}: stopping")
            sup.stop_all(levels[level])
        sup.shutdown()
        say("stopped")
        return 0

    def restart(self, names: list[str]) -> int:
        """Restart replicas one at a time (default: all) without a failed request.

        No nginx reload: a reload replaces nginx's workers, which close their idle client
        keep-alive connections, and a client that sent a request on one just then sees an
        error. Instead Granian stops gracefully: it closes its listening socket at once, so
        nginx's next connects are refused and retried on another replica (proxy_next_upstream
        error; three refusals take it out for fail_timeout), and its idle upstream keep-alive
        connections close, which nginx retries too; the requests in flight finish. The new
        process takes the port back and nginx tries it again after fail_timeout (2 s).
        """
        known = [p.name for p in self.replicas()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ServerError(
                f"no such replica started by `up`: {', '.join(unknown)} "
                f"(there are: {', '.join(known) or 'none'})"
            )
        for name in names or known:
            others = [p for p in self.replicas() if p.name != name and p.live]
            if not others:
                say(f"{name}: no other replica runs: requests fail while it restarts")
            say(f"{name}: restarting")
            self.supervisor.stop(name)
            self.supervisor.start(name)
            self._replica_ready(name)
            if others:
                # nginx counted the refused connects as failures and tries this peer again
                # only after fail_timeout; until then it is not a fallback for the next one.
                say(f"{name}: nginx takes it back within {NGINX_FAIL_TIMEOUT:.0f} s")
                time.sleep(NGINX_FAIL_TIMEOUT + 0.5)
        return 0

    def status(self) -> int:
        """Each process as supervisord sees it, and whether it answers; 1 when one was given
        up on (it kept failing at start) or is not running."""
        procs = self.processes()
        layout = self.layout
        if not procs:
            say("nothing started by `up` is running")
            return 0
        checks = {
            "nginx": f"http://{HOST}:{layout.nginx_status_port}/stub_status",
            "prometheus": f"http://{HOST}:{layout.prometheus_port}/-/ready",
        }
        unwell = 0
        for proc in procs:
            url = checks.get(proc.name)
            if _kind(proc.name) == "api":
                url = f"http://{HOST}:{proc.port}/ready"
            elif _kind(proc.name) == "exporter":
                url = f"http://{HOST}:{proc.port}/metrics"
            if proc.state == "FATAL":
                tries = REPLICA_START_RETRIES if _kind(proc.name) == "api" else 3
                detail = f"GAVE UP after {tries} failed starts ({proc.description})"
            else:
                detail = proc.description
                if proc.live and url is not None:
                    detail += ", answers" if http_ok(url) else ", not answering"
            unwell += proc.state not in ("STARTING", "RUNNING")
            port = f":{proc.port}" if proc.port else "-"
            print(f"  {proc.name:<18} {proc.state:<9} {port:<7} {detail}")
        public = "ready" if http_ok(f"http://{HOST}:{layout.http_port}/ready") else "not answering"
        print(f"  public entry http://{HOST}:{layout.http_port}: {public}")
        return 1 if unwell else 0


__all__ = [
    "EXPORTERS",
    "Layout",
    "Process",
    "Stack",
    "default_replicas",
    "env_name",
    "replica_count",
    "replica_name",
    "spare_env",
]
