"""The whole local stack, as `make up` starts it, for the tests that go through nginx.

`run_local_stack()` runs the real launcher (`python -m stack up` in a subprocess) with a temp run
dir, free loopback ports for everything (never a developer's 8080/9090), a small dataset and the
rate limit off (a burst from one client is one IP), and always ends with `down` plus a sweep of
whatever a failed test left running. Used by test_stack_e2e.py and test_faults_under_load.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stack.launcher import ROOT, Layout, Process, Stack, spare_env
from stack.servers import HOST

STUDENTS = 2_000
UP_TIMEOUT = 120

LOG_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[\d.]+" (?P<status>\d{3}) \d+ \S+ '
    r'"(?P<upstream>[^"]*)" "(?P<upstream_status>[^"]*)"'
)


@dataclass
class LocalStack:
    env: dict[str, str]
    layout: Layout
    ports: list[int]
    """Every port the stack was given."""
    sessions: set[int]
    """Session ids of every process `up` started (supervisord's, which its programs share)."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.layout.http_port}"

    @property
    def launcher_api(self) -> Stack:
        """The launcher as a library, on this stack's layout (what `python -m stack` runs)."""
        return Stack(self.layout, self.env)

    def record(self, name: str) -> Process:
        proc = self.launcher_api.process(name)
        assert proc is not None, f"supervisord runs no {name}"
        return proc

    def launcher(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "stack", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT,
        )
        self.note_sessions()
        return done

    def note_sessions(self) -> None:
        pids = [p.pid for p in self.launcher_api.processes() if p.pid]
        daemon = self.launcher_api.supervisor.pid
        for pid in [*pids, *([daemon] if daemon else [])]:
            stat = _stat(pid)
            if stat is not None:
                self.sessions.add(stat[1])

    def replica_port(self, n: int) -> int:
        return self.layout.replica_port(n)

    def access_log(self) -> Path:
        return self.layout.nginx_prefix / "logs" / "access.log"

    def served_by(self, tag: str, expected: int, timeout: float = 5.0) -> list[dict[str, str]]:
        """Access-log lines of the requests tagged `tag`, once `expected` of them are written."""
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            text = self.access_log().read_text(errors="replace")
            for line in text.splitlines():
                match = LOG_LINE.search(line)
                if match and f"t={tag}" in match["uri"]:
                    lines.append(match.groupdict())
            if len(lines) >= expected or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[3])


def leftovers(stack: LocalStack) -> list[str]:
    """Live processes that belong to the stack: in one of its sessions, or naming its run dir
    or one of its ports on their command line ("pid N (session S): command line")."""
    run = str(stack.layout.run)
    port_re = re.compile(r"(?<!\d)(" + "|".join(str(p) for p in stack.ports) + r")(?!\d)")
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        stat = _stat(pid)
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat is None or stat[0] == "Z":
            continue
        if stat[1] in stack.sessions or run in cmdline or port_re.search(cmdline):
            found.append(f"pid {pid} (session {stat[1]}): {cmdline.strip()[:200]}")
    return found


def _kill_leftovers(stack: LocalStack) -> None:
    for line in leftovers(stack):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[1]), signal.SIGKILL)


@contextlib.contextmanager
def run_local_stack(replicas: int, prefix: str = "surge-e2e-", **env: str) -> Iterator[LocalStack]:
    """A stack of `replicas` replicas over STUDENTS students; `env` adds SURGE_ settings."""
    run = Path(tempfile.mkdtemp(prefix=prefix))
    run.chmod(0o755)  # as root, Postgres runs as the postgres user and must enter it
    full = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    full.update(spare_env(run, replicas))  # free ports, none of them 8080 or 9090
    full.update(
        {
            "SURGE_REPLICAS": str(replicas),
            "SURGE_STUDENTS": str(STUDENTS),
            "SURGE_BOOKINGS": "1000",
            "SURGE_RATE_LIMIT": "off",
            **env,
        }
    )
    layout = Layout.from_env(full)
    all_ports = [int(v) for k, v in full.items() if k.startswith("SURGE_") and k.endswith("_PORT")]
    all_ports += [layout.replica_port(n) for n in range(1, replicas + 1)]
    local = LocalStack(full, layout, all_ports, set())
    try:
        done = local.launcher("up")
        assert done.returncode == 0, f"up failed:\n{done.stdout}\n{done.stderr}"
        yield local
    finally:
        local.launcher("down")
        _kill_leftovers(local)  # only if a test failed before `down` could finish its job
        shutil.rmtree(run, ignore_errors=True)
