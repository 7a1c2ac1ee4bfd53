"""The local topology as processes (what `python -m stack up|down|status|restart` runs).

    Postgres, Redis ── seeder (once) ── api-1..N: Granian on 127.0.0.1:API_PORT_BASE+n
                                              ▲ least_conn, keep-alive, GET retried
                                  nginx on 127.0.0.1:HTTP_PORT (stub_status on NGINX_STATUS_PORT)
    Prometheus on 127.0.0.1:PROMETHEUS_PORT ◄── replicas' /metrics and the exporters
                                                (node, nginx, redis, postgres: Debian packages)

The config files are the ones compose.yaml uses: nginx/nginx.conf.template (rendered by
stack.nginx) and monitoring/prometheus/prometheus.yml, copied as it is; the local addresses go
into the file_sd target files it reads from targets/ beside the copy.

Every process runs detached, in its own session, and has a pid file in RUN/pids/ (pid, kernel
start time, command-line markers), so `down` stops exactly what `up` started and sweeps each
process group (nginx workers, Granian's worker, Postgres backends). Everything `up` starts is
polled until it answers, never waited for with a fixed sleep.

Where and on which ports is Layout (env: SURGE_RUN_DIR, SURGE_HTTP_PORT, ...): the defaults are
the documented ones (8080, 9090, ./.run); the tests and benchmarks use a temp dir and free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from stack.nginx import SERVER_PARAMS, NginxError, NginxServer, local_values
from stack.servers import (
    HOST,
    PostgresServer,
    RedisServer,
    ServerError,
    ensure_port_free,
    free_port_block,
    granian_command,
    group_members,
    kill_group,
    log_tail,
    pid_alive,
    process_cmdline,
    process_start_time,
    wait_for,
    wait_gone,
)


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
    """Data, logs, pid files, rendered configs (default: ./.run)."""
    http_port: int = 8080
    """nginx, the public entry."""
    nginx_status_port: int = 8081
    """nginx's stub_status, for the exporter only."""
    prometheus_port: int = 9090
    pg_port: int = 5432
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
    def pids(self) -> Path:
        return self.run / "pids"

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
# pid files: what `up` started, so that `down` stops exactly that


@dataclass
class Record:
    name: str
    pid: int
    port: int
    start_time: int | None
    """Kernel start time of the process: a pid reused by something else will not match it."""
    markers: list[str]
    """Strings its command line must contain (a second check, for systems without /proc)."""

    def is_live(self) -> bool:
        """True when the pid still belongs to the process we started."""
        if not pid_alive(self.pid):
            return False
        if self.start_time is not None and process_start_time(self.pid) != self.start_time:
            return False
        cmdline = process_cmdline(self.pid)
        return cmdline is not None and all(m in cmdline for m in self.markers)

    def leftovers(self) -> list[int]:
        """Live members of its process group once the leader is gone (e.g. Granian's worker
        after its main process was SIGKILLed: it keeps serving). While such members exist, the
        kernel does not reuse the group id, so they can only be ours."""
        if pid_alive(self.pid):
            return []
        return group_members(self.pid)


class PidFiles:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def save(self, rec: Record) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{rec.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)) + "\n")
        tmp.replace(path)

    def remove(self, name: str) -> None:
        (self.dir / f"{name}.json").unlink(missing_ok=True)

    def load(self, name: str) -> Record | None:
        try:
            return Record(**json.loads((self.dir / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Record]:
        names = sorted(p.stem for p in self.dir.glob("*.json")) if self.dir.exists() else []
        return [r for r in (self.load(n) for n in names) if r is not None]


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


ORDER = {
    "nginx": 0, "prometheus": 1, "exporter": 2, "api": 3, "redis-keeper": 3, "redis": 4,
    "postgres": 5,
}  # fmt: skip
"""`down` stops the entry first (no new requests), then monitoring, replicas, stores."""


def _kind(name: str) -> str:
    if name.endswith("-exporter"):
        return "exporter"
    if replica_number(name) is not None:
        return "api"
    return name


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


class Stack:
    """One local stack: its layout and the environment its processes get."""

    def __init__(
        self, layout: Layout | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.layout = layout or Layout.from_env(self.environ)
        self.pids = PidFiles(self.layout.pids)

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

    def _apply_nginx(self, values: dict[str, str]) -> None:
        """Start nginx with these values, or reload the running one when they changed."""
        server = self.nginx(values)
        rec = self.pids.load("nginx")
        live = rec is not None and rec.is_live()
        if live and rec is not None and server.pid == rec.pid:
            if self.saved_nginx_values() == values and server.conf_path.exists():
                say(f"nginx: already running (pid {rec.pid}) on :{self.layout.http_port}")
            else:
                say("nginx: reloading (new upstreams or knobs)")
                server.reload(values)
        else:
            if live and rec is not None:
                self.stop([rec])
            self._forget(rec)
            if server.running:  # started from this prefix without a pid file of ours
                server.stop()
            ensure_port_free(self.layout.http_port, "nginx", self._hint("SURGE_HTTP_PORT"))
            say(f"nginx: starting on :{self.layout.http_port}")
            server.start(detached=True)
            assert server.pid is not None
            self._record(
                "nginx", server.pid, self.layout.http_port, ["nginx", str(self.layout.nginx_prefix)]
            )
        self._nginx_values_file.write_text(json.dumps(values, indent=1) + "\n")

    # -- records ------------------------------------------------------------------------------

    def _record(self, name: str, pid: int, port: int, markers: list[str]) -> Record:
        rec = Record(name, pid, port, process_start_time(pid), markers)
        self.pids.save(rec)
        return rec

    def _forget(self, rec: Record | None) -> None:
        """Drop a pid file whose process is gone, sweeping what its group left behind."""
        if rec is None:
            return
        if rec.leftovers():
            say(f"{rec.name}: leftovers of pid {rec.pid} still run; killing them")
            kill_group(rec.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while rec.leftovers() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.pids.remove(rec.name)

    def _hint(self, variable: str) -> str:
        return f"set {variable} to another port, or run `make down` if an earlier `up` started it"

    def _spawn(
        self,
        name: str,
        cmd: list[str],
        port: int,
        markers: list[str],
        env: Mapping[str, str] | None = None,
    ) -> Record:
        """Start a detached process (its own session: outlives us, its group is sweepable)."""
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.layout.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%F %T')} starting {name} on :{port}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=dict(env if env is not None else self.environ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Popen returns once the child has entered execve, which sets up the new command line
        # a moment later (under load, /proc/PID/cmdline can still be empty): wait for it, or
        # is_live() would take the new process for a stranger.
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            cmdline = process_cmdline(proc.pid)
            if cmdline and all(m in cmdline for m in markers):
                break
            time.sleep(0.005)
        return self._record(name, proc.pid, port, markers)

    def _wait_ready(self, rec: Record, ready: Callable[[], bool], what: str) -> None:
        wait_for(
            ready,
            timeout=READY_TIMEOUT,
            what=what,
            alive=rec.is_live,
            on_death=lambda: log_tail(self.layout.logs / f"{rec.name}.log"),
            interval=0.05,
        )

    # -- replicas -----------------------------------------------------------------------------

    def replica_env(self) -> dict[str, str]:
        """What replicas get: our environment with the SURGE_ settings `up` ran with (saved, so
        that `restart` starts a replica exactly as `up` did)."""
        env = {k: v for k, v in self.environ.items() if not k.startswith("SURGE_")}
        try:
            saved = json.loads((self.layout.run / "replica-env.json").read_text())
        except (OSError, ValueError):
            saved = {k: v for k, v in self.environ.items() if k.startswith("SURGE_")}
        env.update(saved)
        return env

    def _save_replica_env(self, env: Mapping[str, str]) -> None:
        surge = {k: v for k, v in env.items() if k.startswith("SURGE_")}
        (self.layout.run / "replica-env.json").write_text(json.dumps(surge, indent=1) + "\n")

    def _start_replica(self, n: int, env: Mapping[str, str]) -> Record:
        from api.settings import Settings

        port = self.layout.replica_port(n)
        name = replica_name(n)
        self._forget(self.pids.load(name))
        ensure_port_free(port, f"API replica {n}", self._hint("SURGE_API_PORT_BASE"))
        backpressure = Settings.from_env(dict(env)).redis_pool_size
        cmd = granian_command("api.app:create_app", port, backpressure)
        rec = self._spawn(name, cmd, port, ["granian", f"--port {port}", "api.app:create_app"], env)
        say(f"{name}: starting on :{port}, log in {self._rel(self.layout.logs / (name + '.log'))}")
        return rec

    def _wait_replica(self, rec: Record) -> None:
        url = f"http://{HOST}:{rec.port}/ready"
        self._wait_ready(rec, lambda: http_ok(url), f"{rec.name} (GET {url})")
        say(f"{rec.name}: ready")

    def replicas(self) -> list[Record]:
        """Replica pid files, by number."""
        recs = [r for r in self.pids.all() if replica_number(r.name) is not None]
        return sorted(recs, key=lambda r: replica_number(r.name) or 0)

    # -- stopping -----------------------------------------------------------------------------

    def _signal_stop(self, rec: Record) -> bool:
        """Ask one process to stop (blocking for the ones with their own protocol). False when
        the pid is no longer ours."""
        if not rec.is_live():
            say(f"{rec.name}: not running (pid {rec.pid} gone or reused); forgetting it")
            self._forget(rec)
            return False
        say(f"{rec.name}: stopping pid {rec.pid}")
        kind = _kind(rec.name)
        if kind == "postgres":
            pg = self.postgres()
            if pg.pid == rec.pid:
                pg.stop()
        elif kind == "redis":
            rd = self.redis()
            if rd.pid == rec.pid:
                rd.stop()  # SHUTDOWN SAVE: the next `up` starts warm
        elif kind == "nginx":
            server = self.nginx()
            if server.pid == rec.pid:
                server.stop()  # SIGQUIT: stops accepting, in-flight requests finish
        if pid_alive(rec.pid):
            # Granian: graceful (socket closed, in-flight requests finish); the others: clean
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGTERM)
        return True

    def _finish_stop(self, rec: Record) -> None:
        timeout = REPLICA_STOP_TIMEOUT if _kind(rec.name) == "api" else 15.0
        if not wait_gone(rec.pid, timeout):
            say(f"{rec.name}: did not stop in {timeout:.0f} s; killing it")
        kill_group(rec.pid, signal.SIGKILL)  # what it left behind (workers, backends)
        wait_gone(rec.pid, 10)
        deadline = time.monotonic() + 10
        while group_members(rec.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.pids.remove(rec.name)

    def stop(self, records: Iterable[Record]) -> None:
        """Stop these, kind by kind in ORDER; processes of one kind stop together."""
        by_level: dict[int, list[Record]] = {}
        for rec in records:
            by_level.setdefault(ORDER.get(_kind(rec.name), 2), []).append(rec)
        for level in sorted(by_level):
            asked = [rec for rec in by_level[level] if self._signal_stop(rec)]
            for rec in asked:
                self._finish_stop(rec)

    # -- commands -----------------------------------------------------------------------------

    def _rel(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(ROOT))
        return str(path)

    def _preflight(self, n_replicas: int, monitoring: bool) -> None:
        """Fail on a taken port before anything starts (and before minutes of seeding)."""
        layout = self.layout

        def ours(name: str, port: int) -> bool:
            rec = self.pids.load(name)
            return rec is not None and rec.is_live() and rec.port == port

        if not self.environ.get("SURGE_DATABASE_URL") and not self.postgres().running:
            ensure_port_free(
                layout.pg_port,
                "Postgres",
                "set SURGE_DATABASE_URL to use that server, or SURGE_PG_PORT",
            )
        if not self.environ.get("SURGE_REDIS_URL") and not self.redis().running:
            ensure_port_free(
                layout.redis_port,
                "Redis",
                "set SURGE_REDIS_URL to use that server, or SURGE_REDIS_PORT",
            )
        for n in range(1, n_replicas + 1):
            if not ours(replica_name(n), layout.replica_port(n)):
                ensure_port_free(
                    layout.replica_port(n), f"API replica {n}", self._hint("SURGE_API_PORT_BASE")
                )
        if not ours("nginx", layout.http_port):
            ensure_port_free(layout.http_port, "nginx", self._hint("SURGE_HTTP_PORT"))
            ensure_port_free(
                layout.nginx_status_port,
                "nginx's stub_status",
                self._hint("SURGE_NGINX_STATUS_PORT"),
            )
        if monitoring:
            if not ours("prometheus", layout.prometheus_port):
                ensure_port_free(
                    layout.prometheus_port, "Prometheus", self._hint("SURGE_PROMETHEUS_PORT")
                )
            for exp in EXPORTERS:
                port = getattr(layout, exp.port_field)
                if not ours(exp.name, port):
                    ensure_port_free(port, exp.name, self._hint(env_name(exp.port_field)))
                find_program(exp.program, exp.program)
            find_program("prometheus", "prometheus")

    def _stores(self, env: dict[str, str]) -> None:
        if self.environ.get("SURGE_DATABASE_URL"):
            say("Postgres: using SURGE_DATABASE_URL (not starting one)")
        else:
            pg = self.postgres()
            if pg.running:
                say(f"Postgres: already running (pid {pg.pid}) on :{pg.port}")
            else:
                say(f"Postgres: starting on :{pg.port}, data in {self._rel(pg.data_dir)}")
            pg.start()
            assert pg.pid is not None
            self._record("postgres", pg.pid, pg.port, ["postgres", str(pg.data_dir)])
            env["SURGE_DATABASE_URL"] = pg.url

        if self.environ.get("SURGE_REDIS_URL"):
            say("Redis: using SURGE_REDIS_URL (not starting one)")
        else:
            rd = self.redis()
            if rd.running:
                say(f"Redis: already running (pid {rd.pid}) on :{rd.port}")
            else:
                say(f"Redis: starting on :{rd.port}, data in {self._rel(rd.dir)}")
            rd.start()
            assert rd.pid is not None
            self._record("redis", rd.pid, rd.port, ["redis-server", f":{rd.port}"])
            env["SURGE_REDIS_URL"] = rd.url

    def _keeper_up(self, env: dict[str, str]) -> None:
        """The seeder in watch mode: a Redis that restarted empty or was flushed is refilled
        from Postgres within seconds, without anyone running `make seed`."""
        rec = self.pids.load(KEEPER)
        if rec is not None and rec.is_live():
            say(f"{KEEPER}: already running (pid {rec.pid})")
            return
        self._forget(rec)
        cmd = [sys.executable, "-m", "seeder", "--watch", str(KEEPER_INTERVAL_S)]
        self._spawn(KEEPER, cmd, 0, ["seeder", "--watch"], env)
        say(f"{KEEPER}: started (seeds what is out of date every {KEEPER_INTERVAL_S:g} s)")

    def _replicas_up(self, n_replicas: int, env: dict[str, str]) -> None:
        """Start the missing replicas; nginx then gets the set, and only after that do the ones
        beyond n_replicas stop (scale-down without a refused request)."""
        started: list[Record] = []
        for n in range(1, n_replicas + 1):
            rec = self.pids.load(replica_name(n))
            if rec is not None and rec.is_live() and rec.port == self.layout.replica_port(n):
                say(f"{rec.name}: already running (pid {rec.pid}) on :{rec.port}")
                continue
            if rec is not None and rec.is_live():  # listening elsewhere (an older layout)
                self.stop([rec])
            started.append(self._start_replica(n, env))
        for rec in started:
            self._wait_replica(rec)

    def up(self) -> int:
        from api.settings import Settings

        layout = self.layout
        layout.run.mkdir(parents=True, exist_ok=True)
        layout.logs.mkdir(parents=True, exist_ok=True)
        n_replicas = replica_count(self.environ)
        monitoring = monitoring_enabled(self.environ)
        for rec in self.pids.all():  # gone since the last `up`: sweep what it left (ports)
            if not rec.is_live():
                self._forget(rec)
        # A replica that served the public port itself (before nginx) moves to its own port.
        for rec in self.replicas():
            n = replica_number(rec.name) or 0
            if rec.is_live() and n <= n_replicas and rec.port != layout.replica_port(n):
                say(f"{rec.name}: listens on :{rec.port}, moving it to :{layout.replica_port(n)}")
                self.stop([rec])
        self._preflight(n_replicas, monitoring)

        env = dict(self.environ)
        self._stores(env)
        settings = Settings.from_env(env)
        say(f"seeding {settings.students:,} students and {settings.bookings:,} bookings")
        from seeder import seed

        report = seed(settings, progress=True)
        say(f"seeded: {report}")

        if not self.environ.get("SURGE_REDIS_URL"):  # a Redis of its own: keep it whole
            self._keeper_up(env)
        self._save_replica_env(env)
        self._replicas_up(n_replicas, env)
        ports = [layout.replica_port(n) for n in range(1, n_replicas + 1)]
        self._apply_nginx(self.nginx_values(ports))
        extra = [r for r in self.replicas() if (replica_number(r.name) or 0) > n_replicas]
        if extra:
            self.stop(extra)
        public = f"http://{HOST}:{layout.http_port}/ready"
        wait_for(lambda: http_ok(public), timeout=READY_TIMEOUT, what=f"nginx (GET {public})")
        say("nginx: ready")

        if monitoring:
            self._monitoring_up(env, ports)
        else:
            say("monitoring: off (SURGE_MONITORING); stopping any Prometheus and exporters")
            self.stop(r for r in self.pids.all() if _kind(r.name) in ("prometheus", "exporter"))
        self._print_urls(settings.database_url, settings.redis_url, n_replicas, monitoring)
        return 0

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
        for job, job_ports in jobs.items():
            content = json.dumps([{"targets": [f"{HOST}:{p}" for p in job_ports]}], indent=1)
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
            return [
                program,
                f"-redis.addr={env['SURGE_REDIS_URL']}",
                f"-web.listen-address={listen}",
            ]
        return [program, f"--web.listen-address={listen}"]  # postgres: DATA_SOURCE_NAME

    def _monitoring_up(self, env: dict[str, str], ports: list[int]) -> None:
        layout = self.layout
        prom_dir = layout.prometheus_dir
        prom_dir.mkdir(parents=True, exist_ok=True)
        self._write_targets(ports)
        config = prom_dir / "prometheus.yml"
        source = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
        config_changed = not config.exists() or config.read_text(encoding="utf-8") != source
        if config_changed:
            config.write_text(source, encoding="utf-8")

        started: list[tuple[Record, str]] = []
        for exp in EXPORTERS:
            port = getattr(layout, exp.port_field)
            rec = self.pids.load(exp.name)
            if rec is not None and rec.is_live() and rec.port == port:
                say(f"{exp.name}: already running (pid {rec.pid}) on :{port}")
                continue
            if rec is not None and rec.is_live():
                self.stop([rec])
            self._forget(self.pids.load(exp.name))
            ensure_port_free(port, exp.name, self._hint(env_name(exp.port_field)))
            proc_env = dict(self.environ)
            if exp.name == "postgres-exporter":
                proc_env["DATA_SOURCE_NAME"] = _with_query(
                    env["SURGE_DATABASE_URL"], "sslmode=disable"
                )
            cmd = self._exporter_command(exp, env)
            rec = self._spawn(exp.name, cmd, port, [exp.program, f"{HOST}:{port}"], proc_env)
            say(f"{exp.name}: starting on :{port}")
            started.append((rec, f"http://{HOST}:{port}/metrics"))

        prom = self.pids.load("prometheus")
        listen = f"{HOST}:{layout.prometheus_port}"
        if prom is not None and prom.is_live() and prom.port == layout.prometheus_port:
            if config_changed:
                say("prometheus: config changed; reloading (SIGHUP)")
                os.kill(prom.pid, signal.SIGHUP)
            else:
                say(f"prometheus: already running (pid {prom.pid}) on :{prom.port}")
        else:
            if prom is not None and prom.is_live():
                self.stop([prom])
            self._forget(self.pids.load("prometheus"))
            ensure_port_free(
                layout.prometheus_port, "Prometheus", self._hint("SURGE_PROMETHEUS_PORT")
            )
            retention = self.environ.get("SURGE_PROMETHEUS_RETENTION") or "7d"
            cmd = [
                find_program("prometheus", "prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address={listen}",
                # k6 writes its results here (k6 run -o experimental-prometheus-rw)
                "--web.enable-remote-write-receiver",
            ]
            rec = self._spawn(
                "prometheus",
                cmd,
                layout.prometheus_port,
                ["prometheus", f"--web.listen-address={listen}"],
            )
            say(f"prometheus: starting on :{layout.prometheus_port}")
            started.append((rec, f"http://{listen}/-/ready"))
        for rec, url in started:
            self._wait_ready(
                rec,
                lambda url=url: http_ok(url, timeout=5),  # type: ignore[misc]
                f"{rec.name} (GET {url})",
            )
            say(f"{rec.name}: ready")

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
        print(f"    Redis             {redis_url}")
        print(f"  logs in {self._rel(layout.logs)}/, stop with `make down`")

    def down(self) -> int:
        records = self.pids.all()
        if not records:
            say("nothing to stop")
            return 0
        errors = 0
        try:
            self.stop(records)
        except (ServerError, NginxError) as e:
            say(f"error: {e}")
            errors += 1
        left = self.pids.all()
        if left:
            # One that failed must not keep the others running.
            for rec in left:
                try:
                    self.stop([rec])
                except (ServerError, NginxError) as e:
                    say(f"{rec.name}: {e}")
                    errors += 1
        say("stopped" if not errors else f"{errors} could not be stopped")
        return 1 if errors else 0

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
        known = {r.name: r for r in self.replicas()}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ServerError(
                f"no such replica started by `up`: {', '.join(unknown)} "
                f"(there are: {', '.join(known) or 'none'})"
            )
        env = self.replica_env()
        for name in names or list(known):
            rec = self.pids.load(name)
            others = [r for r in self.replicas() if r.name != name and r.is_live()]
            if not others:
                say(f"{name}: no other replica runs: requests fail while it restarts")
            if rec is not None and rec.is_live():
                self.stop([rec])
            else:
                self._forget(rec)
            self._wait_replica(self._start_replica(replica_number(name) or 0, env))
            if others:
                # nginx counted the refused connects as failures and tries this peer again
                # only after fail_timeout; until then it is not a fallback for the next one.
                say(f"{name}: nginx takes it back within {NGINX_FAIL_TIMEOUT:.0f} s")
                time.sleep(NGINX_FAIL_TIMEOUT + 0.5)
        return 0

    def status(self) -> int:
        records = self.pids.all()
        layout = self.layout
        if not records:
            say("nothing started by `up` is running")
            return 0
        checks = {
            "nginx": f"http://{HOST}:{layout.nginx_status_port}/stub_status",
            "prometheus": f"http://{HOST}:{layout.prometheus_port}/-/ready",
        }
        for rec in sorted(records, key=lambda r: (ORDER.get(_kind(r.name), 9), r.name)):
            live = rec.is_live()
            state = "running" if live else "gone (stale pid file)"
            url = checks.get(rec.name)
            if _kind(rec.name) == "api":
                url = f"http://{HOST}:{rec.port}/ready"
            elif _kind(rec.name) == "exporter":
                url = f"http://{HOST}:{rec.port}/metrics"
            extra = ""
            if live and url:
                extra = ", answers" if http_ok(url) else ", not answering"
            print(f"  {rec.name:<18} pid {rec.pid:<8} :{rec.port:<6} {state}{extra}")
        public = "ready" if http_ok(f"http://{HOST}:{layout.http_port}/ready") else "not answering"
        print(f"  public entry http://{HOST}:{layout.http_port}: {public}")
        return 0


__all__ = [
    "EXPORTERS",
    "Layout",
    "PidFiles",
    "Record",
    "Stack",
    "default_replicas",
    "env_name",
    "replica_count",
    "replica_name",
    "spare_env",
]
