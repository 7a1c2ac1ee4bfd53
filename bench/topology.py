"""What the bench's runs are aimed at: surge through the launcher's stack, and the yardstick
apps (the bare handler, the raw ASGI app) behind a second nginx from the same template."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from pathlib import Path

from bench import say
from bench.api import answers
from bench.replicas import Topology as LauncherTopology
from bench.resources import wait_copies
from bench.sampling import with_children
from core.settings import Settings
from seeder.generate import FIRST_STUDENT_ID
from stack.nginx import NginxServer, knobs_from_env, local_values
from stack.servers import (
    HOST,
    free_port,
    granian_command,
    stop_children,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


class Topology(LauncherTopology):
    """bench/replicas.py's launcher stack, with one process group per replica and scaling that
    skips a change to the count it already has."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.env["SURGE_NGINX_ACCESS_LOG"] = "on"  # nginx's own view of each k6 run (tiers)
        self.replicas = 0

    def scale(self, n: int) -> None:
        if n != self.replicas:
            say(f"stack: {n} replica(s) behind nginx at {self.url}")
            self.launcher("up", SURGE_REPLICAS=str(n))
            self.replicas = n
            took = wait_copies(list(self.processes()[1].values()))
            say(f"stack: the replicas' copies whole after {took:.1f} s")

    def processes(self) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Pids per process (nginx, api-1..N) and each replica's port."""
        from stack.launcher import Stack

        launcher = Stack(self.layout, self.env)
        groups = {
            name: pids
            for name, pids in launcher.process_groups().items()
            if name == "nginx" or name.startswith("api-")
        }
        ports = {p.name: p.port for p in launcher.replicas()}
        return groups, ports

    @property
    def admission_cap(self) -> int:
        """Record requests nginx lets into the replicas at once (SURGE_NGINX_MAX_INFLIGHT)."""
        return int(knobs_from_env(self.env)["SURGE_NGINX_MAX_INFLIGHT"])

    @property
    def status_url(self) -> str:
        return f"http://{HOST}:{self.layout.nginx_status_port}/stub_status"

    @property
    def access_log(self) -> Path:
        return self.layout.nginx_prefix / "logs" / "access.log"

    def down(self) -> None:
        try:
            if self.replicas:
                self.launcher("down")
        finally:
            shutil.rmtree(self.run, ignore_errors=True)


class BareTopology:
    """Replicas of a yardstick app (bench/bare_handler.py, or bench/raw_asgi.py: `app`) behind
    a second nginx rendered from the same template; their processes named `kind`-1..N."""

    def __init__(
        self,
        settings: Settings,
        replicas: int,
        prefix: Path,
        app: str = "bench.bare_handler:create_app",
        kind: str = "bare",
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.kind = kind
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = [free_port() for _ in range(replicas)]
        for port in self.ports:
            cmd = granian_command(app, port, settings.stores.redis_pool_size)
            self.procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in self.ports:
            wait_for(
                functools.partial(answers, port, f"/students/{FIRST_STUDENT_ID}"),
                timeout=30,
                what=app,
            )
        values = local_values(
            prefix,
            port=free_port(),
            status_port=free_port(),
            upstream_ports=self.ports,
            SURGE_RATE_LIMIT="off",
            SURGE_NGINX_ACCESS_LOG="on",
        )
        self.nginx = NginxServer(prefix, values)
        self.nginx.start()
        self.url = self.nginx.url

    def groups(self) -> dict[str, list[int]]:
        groups = {"nginx": with_children(self.nginx.pid)} if self.nginx.pid else {}
        for i, proc in enumerate(self.procs, 1):
            groups[f"{self.kind}-{i}"] = with_children(proc.pid)
        return groups

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.nginx.stop()
        stop_children(self.procs)
