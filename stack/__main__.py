"""`python -m stack up|down|status`: surge as local processes, for machines without Docker.

up      Postgres (.run/postgres, :5432) and Redis (.run/redis, :6379) unless SURGE_DATABASE_URL /
        SURGE_REDIS_URL point elsewhere; the seeder; SURGE_REPLICAS API replicas on Granian.
        Safe to repeat: what already runs is left running.
down    Stops exactly what `up` started (its pid files, each checked against the live process),
        and nothing else. Safe to repeat.
status  What runs, where.

Everything lives under .run/: data, logs/ (one log per process), pids/ (one JSON file per process).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from stack.servers import (
    HOST,
    PostgresServer,
    RedisServer,
    ServerError,
    ensure_port_free,
    granian_command,
    kill_group,
    log_tail,
    pid_alive,
    process_cmdline,
    process_start_time,
    wait_for,
    wait_gone,
)

PUBLIC_PORT = 8080
"""The public entry (DESIGN.md). Until nginx exists, replica 1 listens here itself."""
PROMETHEUS_PORT = 9090
PG_PORT = 5432
REDIS_PORT = 6379
BEHIND_PROXY = False
"""Set once nginx owns PUBLIC_PORT: then replica N listens on 8000+N, replica 1 included."""
READY_TIMEOUT = 60.0


def _root() -> Path:
    """The checkout: where pyproject.toml is (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


ROOT = _root()
RUN = ROOT / ".run"
LOGS = RUN / "logs"
PIDS = RUN / "pids"


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


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

    @property
    def path(self) -> Path:
        return PIDS / f"{self.name}.json"

    def save(self) -> None:
        PIDS.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_live(self) -> bool:
        """True when the pid still belongs to the process we started."""
        if not pid_alive(self.pid):
            return False
        if self.start_time is not None and process_start_time(self.pid) != self.start_time:
            return False
        cmdline = process_cmdline(self.pid)
        return cmdline is not None and all(m in cmdline for m in self.markers)

    @classmethod
    def load(cls, name: str) -> Record | None:
        try:
            return cls(**json.loads((PIDS / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def all(cls) -> list[Record]:
        names = sorted(p.stem for p in PIDS.glob("*.json")) if PIDS.exists() else []
        return [r for r in (cls.load(n) for n in names) if r is not None]


def _record(name: str, pid: int, port: int, markers: list[str]) -> Record:
    rec = Record(name, pid, port, process_start_time(pid), markers)
    rec.save()
    return rec


# --------------------------------------------------------------------------------------------
# the pieces


def postgres() -> PostgresServer:
    return PostgresServer(
        RUN / "postgres",
        PG_PORT,
        RUN / "sock",
        log_file=LOGS / "postgres.log",
        detached=True,
    )


def redis() -> RedisServer:
    return RedisServer(
        RUN / "redis", REDIS_PORT, persist=True, log_file=LOGS / "redis.log", detached=True
    )


def replica_port(n: int) -> int:
    if n == 1 and not BEHIND_PROXY:
        return PUBLIC_PORT
    return 8000 + n


def replica_name(n: int) -> str:
    return f"api-{n}"


def replica_count() -> int:
    raw = os.environ.get("SURGE_REPLICAS", "").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= 32:
        raise ServerError(f"SURGE_REPLICAS must be a whole number from 1 to 32, not {raw!r}")
    return n


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_replica(n: int, env: dict[str, str], backpressure: int) -> Record:
    port = replica_port(n)
    name = replica_name(n)
    ensure_port_free(port, f"API replica {n}", REPLICA_HINT)
    cmd = granian_command("api.app:create_app", port, backpressure)
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} starting {name} on :{port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make up`; its own group, so `down` can sweep it
        )
    return _record(name, proc.pid, port, ["granian", f"--port {port}", "api.app:create_app"])


def stop_record(rec: Record, timeout: float = 30.0) -> None:
    """Stop one process `up` started, if the pid is still ours; drop its pid file either way."""
    if not rec.is_live():
        say(f"{rec.name}: not running (pid {rec.pid} gone or reused); forgetting it")
        rec.remove()
        return
    say(f"{rec.name}: stopping pid {rec.pid}")
    if rec.name == "postgres":
        server = postgres()
        if server.pid == rec.pid:
            server.stop(timeout)
    elif rec.name == "redis":
        server_r = redis()
        if server_r.pid == rec.pid:
            server_r.stop(timeout)  # SHUTDOWN SAVE: the next `up` starts warm
    if pid_alive(rec.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGTERM)  # Granian: graceful, stops its workers
        if not wait_gone(rec.pid, timeout):
            say(f"{rec.name}: did not stop in {timeout:.0f} s; killing it")
    kill_group(rec.pid, signal.SIGKILL)  # workers or backends it left behind
    wait_gone(rec.pid, 10)
    rec.remove()


# --------------------------------------------------------------------------------------------
# commands


REPLICA_HINT = "run `make down` if an earlier `make up` started it"


def preflight(n_replicas: int) -> None:
    """Fail on a taken port before anything starts (and before minutes of seeding)."""
    if not os.environ.get("SURGE_DATABASE_URL") and not postgres().running:
        ensure_port_free(PG_PORT, "Postgres", "set SURGE_DATABASE_URL to use that server")
    if not os.environ.get("SURGE_REDIS_URL") and not redis().running:
        ensure_port_free(REDIS_PORT, "Redis", "set SURGE_REDIS_URL to use that server")
    for n in range(1, n_replicas + 1):
        rec = Record.load(replica_name(n))
        if rec is None or not rec.is_live():
            ensure_port_free(replica_port(n), f"API replica {n}", REPLICA_HINT)


def up() -> int:
    from api.settings import Settings

    RUN.mkdir(exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    n_replicas = replica_count()
    preflight(n_replicas)

    if os.environ.get("SURGE_DATABASE_URL"):
        say("Postgres: using SURGE_DATABASE_URL (not starting one)")
    else:
        pg = postgres()
        if pg.running:
            say(f"Postgres: already running (pid {pg.pid}) on :{pg.port}")
        else:
            say(f"Postgres: starting on :{pg.port}, data in {pg.data_dir.relative_to(ROOT)}")
        pg.start()
        assert pg.pid is not None
        _record("postgres", pg.pid, pg.port, ["postgres", str(pg.data_dir)])
        env["SURGE_DATABASE_URL"] = pg.url

    if os.environ.get("SURGE_REDIS_URL"):
        say("Redis: using SURGE_REDIS_URL (not starting one)")
    else:
        rd = redis()
        if rd.running:
            say(f"Redis: already running (pid {rd.pid}) on :{rd.port}")
        else:
            say(f"Redis: starting on :{rd.port}, data in {rd.dir.relative_to(ROOT)}")
        rd.start()
        assert rd.pid is not None
        _record("redis", rd.pid, rd.port, ["redis-server", f":{rd.port}"])
        env["SURGE_REDIS_URL"] = rd.url

    settings = Settings.from_env(env)
    say(f"seeding {settings.students:,} students and {settings.bookings:,} bookings")
    from seeder import seed

    report = seed(settings, progress=True)
    say(f"seeded: {report}")

    # replicas: keep those that run, start the missing ones, stop any beyond SURGE_REPLICAS
    for rec in Record.all():
        if rec.name.startswith("api-") and int(rec.name[4:]) > n_replicas:
            stop_record(rec)
    started: list[Record] = []
    for n in range(1, n_replicas + 1):
        rec = Record.load(replica_name(n))
        if rec is not None and rec.is_live():
            say(f"{rec.name}: already running (pid {rec.pid}) on :{rec.port}")
        else:
            if rec is not None:
                rec.remove()
            rec = start_replica(n, env, settings.redis_pool_size)
            say(f"{rec.name}: starting on :{rec.port}, log in .run/logs/{rec.name}.log")
        started.append(rec)
    for rec in started:
        wait_for(
            lambda rec=rec: _ready(rec.port),  # type: ignore[misc]
            timeout=READY_TIMEOUT,
            what=f"{rec.name} (GET http://{HOST}:{rec.port}/ready)",
            alive=rec.is_live,
            on_death=lambda rec=rec: log_tail(LOGS / f"{rec.name}.log"),  # type: ignore[misc]
            interval=0.1,
        )
        say(f"{rec.name}: ready")

    print()
    print(f"  surge is up: http://{HOST}:{PUBLIC_PORT}")
    print(f"    try        http://{HOST}:{PUBLIC_PORT}/students/10000")
    print(f"    API docs   http://{HOST}:{PUBLIC_PORT}/docs")
    if n_replicas > 1:
        others = ", ".join(f"http://{HOST}:{replica_port(n)}" for n in range(2, n_replicas + 1))
        print(f"    replicas   {others}")
    print(f"    Postgres   {settings.database_url}")
    print(f"    Redis      {settings.redis_url}")
    print("  logs in .run/logs/, stop with `make down`")
    return 0


def down() -> int:
    records = Record.all()
    if not records:
        say("nothing to stop")
        return 0
    order = {"postgres": 2, "redis": 1}  # replicas first, their stores last
    errors = 0
    for rec in sorted(records, key=lambda r: (order.get(r.name, 0), r.name)):
        try:
            stop_record(rec)
        except ServerError as e:
            say(f"{rec.name}: {e}")
            errors += 1
    say("stopped" if not errors else f"{errors} could not be stopped")
    return 1 if errors else 0


def status() -> int:
    records = Record.all()
    if not records:
        say("nothing started by `make up` is running")
        return 0
    for rec in records:
        live = rec.is_live()
        state = "running" if live else "gone (stale pid file)"
        extra = ""
        if live and rec.name.startswith("api-"):
            extra = ", ready" if _ready(rec.port) else ", not ready"
        print(f"  {rec.name:<9} pid {rec.pid:<8} :{rec.port:<6} {state}{extra}")
    public = "ready" if _ready(PUBLIC_PORT) else "not answering"
    print(f"  public entry http://{HOST}:{PUBLIC_PORT}: {public}")
    return 0


COMMANDS = {"up": up, "down": down, "status": status}
UP_FAILED = "what did start is still running: `make status` shows it, `make down` stops it"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in COMMANDS:
        print("usage: python -m stack up|down|status", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args[0]]()
    except ServerError as e:
        say(f"error: {e}")
        if args[0] == "up":
            say(UP_FAILED)
        return 1
    except Exception:
        if args[0] == "up":
            say(UP_FAILED)
        raise
    except KeyboardInterrupt:
        say("interrupted; `make down` stops whatever was started")
        return 130


if __name__ == "__main__":
    sys.exit(main())
