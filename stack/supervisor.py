"""supervisord for the local stack: the config it runs from, and a client for its XML-RPC API.

Every process `make up` starts is a supervisord program: supervisord starts it, restarts it
when it exits (a replica SIGKILLed is back within a second or two), gives up on one that keeps
failing at start (FATAL, which `make status` shows), and stops them in reverse priority order.
What supervisord cannot do (rendering configs, readiness waits, seeding between the stores and
the replicas) stays in stack.launcher, which asks supervisord to start each program in turn.
"""

from __future__ import annotations

import contextlib
import resource
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.servers import ServerError, group_members, log_tail, pid_alive

START_TIMEOUT = 15.0
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})
RUNNING_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF"})
MIN_FDS = 65_536
"""supervisord raises its open-file limit to this, and its children inherit it (nginx keeps two
descriptors per client connection: 3,000 k6 VUs need more than the usual 1,024)."""


def _min_fds() -> int:
    """MIN_FDS, or the hard limit when that is lower (supervisord refuses to start otherwise)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return MIN_FDS if hard == resource.RLIM_INFINITY else min(MIN_FDS, hard)


@dataclass(frozen=True)
class Program:
    """One supervised process, as supervisord's [program:x] section needs it."""

    name: str
    command: list[str]
    priority: int
    """Lower starts first and stops last."""
    port: int = 0
    """Where it listens (for `status`); 0 for none."""
    environment: Mapping[str, str] = field(default_factory=dict)
    directory: Path | None = None
    user: str | None = None
    stop_signal: str = "TERM"
    stop_wait_s: int = 10
    start_secs: int = 1
    """Seconds it must stay up to count as started; exits sooner are failed tries."""
    start_retries: int = 3
    """Failed tries in a row before supervisord gives up (FATAL)."""


def _quoted_env_value(name: str, value: str) -> str:
    """A value for `environment=` (supervisor's lexer has quotes but no escapes)."""
    if "\n" in value or ('"' in value and "'" in value):
        raise ServerError(f"{name} holds a newline or both kinds of quote: supervisord cannot")
    quote = "'" if '"' in value else '"'
    return quote + value.replace("%", "%%") + quote


def _section(program: Program, logs: Path) -> list[str]:
    log = logs / f"{program.name}.log"
    lines = [
        f"[program:{program.name}]",
        "command=" + shlex.join(program.command).replace("%", "%%"),
        f"priority={program.priority}",
        "autostart=false",  # stack.launcher starts each in order, after what it needs
        "autorestart=true",
        f"startsecs={program.start_secs}",
        f"startretries={program.start_retries}",
        f"stopsignal={program.stop_signal}",
        f"stopwaitsecs={program.stop_wait_s}",
        "stopasgroup=true",  # Granian's worker, nginx's workers, Postgres's backends
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=2",
    ]
    if program.directory is not None:
        lines.append(f"directory={program.directory}")
    if program.user is not None:
        lines.append(f"user={program.user}")
    if program.environment:
        pairs = [f"{k}={_quoted_env_value(k, v)}" for k, v in sorted(program.environment.items())]
        lines.append("environment=" + ",".join(pairs))
    return lines


class Supervisor:
    """The supervisord of one run directory: its config, socket, pid file and log."""

    def __init__(self, directory: Path, logs: Path) -> None:
        self.dir = directory
        self.logs = logs
        self.conf = directory / "supervisord.conf"
        self.socket = directory / "supervisor.sock"
        self.pid_file = directory / "supervisord.pid"
        self.log = logs / "supervisord.log"

    # -- config ------------------------------------------------------------------------------

    def render(self, programs: list[Program]) -> str:
        lines = [
            "; written by `python -m stack up` on each run: edits here are lost",
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.log}",
            f"pidfile={self.pid_file}",
            f"childlogdir={self.logs}",
            f"minfds={_min_fds()}",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
        ]
        for program in programs:
            lines += ["", *_section(program, self.logs)]
        return "\n".join(lines) + "\n"

    def write(self, programs: list[Program]) -> bool:
        """Write the config; True when it changed."""
        text = self.render(programs)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.conf.exists() and self.conf.read_text(encoding="utf-8") == text:
            return False
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.conf)
        return True

    # -- the daemon --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _proxy(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    @property
    def running(self) -> bool:
        if self.pid is None:
            return False
        try:
            return bool(self._proxy().supervisor.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def start_daemon(self, environ: Mapping[str, str]) -> None:
        """supervisord with this config, daemonized; returns once its API answers."""
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)]
        done = subprocess.run(
            cmd, env=dict(environ), capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise ServerError(f"supervisord did not start: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + START_TIMEOUT
        while not self.running:
            if time.monotonic() > deadline:
                raise ServerError(f"supervisord does not answer{log_tail(self.log)}")
            time.sleep(0.05)

    def shutdown(self, timeout: float = 60.0) -> None:
        pid = self.pid
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self._proxy().supervisor.shutdown()
        deadline = time.monotonic() + timeout
        while pid is not None and pid_alive(pid):
            if time.monotonic() > deadline:
                raise ServerError(f"supervisord (pid {pid}) did not stop{log_tail(self.log)}")
            time.sleep(0.05)

    # -- programs ----------------------------------------------------------------------------

    def reload(self) -> tuple[set[str], set[str], set[str]]:
        """Reread the config: (added, changed, removed) program names, none applied yet."""
        [[added, changed, removed]] = self._proxy().supervisor.reloadConfig()
        return set(added), set(changed), set(removed)

    def add(self, name: str) -> None:
        with contextlib.suppress(xmlrpc.client.Fault):  # already added
            self._proxy().supervisor.addProcessGroup(name)

    def remove(self, name: str) -> None:
        self.stop(name)
        with contextlib.suppress(xmlrpc.client.Fault):  # not there
            self._proxy().supervisor.removeProcessGroup(name)

    def start(self, name: str) -> None:
        """Ask for a start, without waiting (readiness is the launcher's to judge)."""
        try:
            self._proxy().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as e:
            if "ALREADY_STARTED" not in e.faultString:
                raise ServerError(f"{name}: cannot start: {e.faultString}") from None

    def stop(self, name: str) -> None:
        """Stop it and wait (its stop signal, then SIGKILL to the group after stop_wait_s)."""
        try:
            self._proxy().supervisor.stopProcess(name, True)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString and "BAD_NAME" not in e.faultString:
                raise ServerError(f"{name}: cannot stop: {e.faultString}") from None

    def stop_all(self, names: list[str], timeout: float = 60.0) -> None:
        """Ask all of these to stop at once, then wait for every one."""
        proxy = self._proxy()
        for name in names:
            with contextlib.suppress(xmlrpc.client.Fault):
                proxy.supervisor.stopProcess(name, False)
        deadline = time.monotonic() + timeout
        while any(self.state(n) not in (STOPPED_STATES | {None}) for n in names):
            if time.monotonic() > deadline:
                raise ServerError(f"not stopped after {timeout:.0f} s: {', '.join(names)}")
            time.sleep(0.05)

    def signal(self, name: str, sig: str) -> None:
        self._proxy().supervisor.signalProcess(name, sig)

    def info(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._proxy().supervisor.getProcessInfo(name))
        except xmlrpc.client.Fault:
            return None

    def state(self, name: str) -> str | None:
        info = self.info(name)
        return None if info is None else str(info["statename"])

    def all_info(self) -> list[dict[str, Any]]:
        if not self.running:
            return []
        return [dict(i) for i in self._proxy().supervisor.getAllProcessInfo()]

    def pid_of(self, name: str) -> int | None:
        info = self.info(name)
        return int(info["pid"]) or None if info else None


def group_pids(pid: int) -> list[int]:
    """The process group a supervised program leads (supervisord gives each its own)."""
    return group_members(pid) or ([pid] if pid_alive(pid) else [])


__all__ = ["Program", "Supervisor", "group_pids"]
