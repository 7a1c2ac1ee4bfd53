"""nginx for the local launcher and the tests: render nginx/nginx.conf.template, run nginx.

The template is the one compose uses (the official image renders it with envsubst); here it is
rendered with string.Template.safe_substitute, which gives the same text because every
placeholder is ${SURGE_...} and the file has no double dollar sign. nginx's own $variables are
left alone: only SURGE_ names are ever passed in.

    values = local_values(RUN / "nginx", port=8080, status_port=8081, upstream_ports=[8001, 8002])
    server = NginxServer(RUN / "nginx", values)
    server.start()            # nginx -t, then the master in the foreground (`daemon off`)
    server.reload(values)     # re-render, nginx -t, SIGHUP; returns once new workers serve
    server.stop()             # graceful (SIGQUIT), then SIGTERM, then SIGKILL

Two lifetimes, as in stack.servers: attached (default, tests) dies with us; detached (`make up`)
runs in its own session and is found again later from its pid file (NginxServer(...).stop()).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from string import Template

from core.settings import StackSettings, env_name
from stack.servers import (
    attach,
    child_pids,
    detach,
    die_with_parent,
    pid_alive,
    stack_settings,
    wait_gone,
)

TEMPLATE = Path(__file__).resolve().parent.parent / "nginx" / "nginx.conf.template"
"""The one nginx config of the project (compose mounts the same file)."""

PLACEHOLDER = re.compile(r"\$\{(SURGE_[A-Z0-9_]+)\}")

KNOBS = (
    "nginx_workers",
    "nginx_read_timeout",
    "nginx_access_log",
    "nginx_microcache",
    "rate_limit",
    "rate_limit_rate",
    "rate_limit_burst",
    "nginx_max_inflight",
)
"""The StackSettings fields that are template placeholders (SURGE_<FIELD>) as they are."""


def knobs(settings: StackSettings) -> dict[str, str]:
    """The knobs' placeholder values from these settings."""
    return {env_name(name): str(getattr(settings, name)) for name in KNOBS}


DEFAULTS: dict[str, str] = knobs(StackSettings())
"""Knobs with the defaults a real deployment keeps; compose.yaml uses the same ones."""

LAYOUT = (
    "SURGE_NGINX_LISTEN",
    "SURGE_NGINX_STATUS_LISTEN",
    "SURGE_NGINX_UPSTREAM",
    "SURGE_NGINX_PID",
    "SURGE_NGINX_ERROR_LOG",
    "SURGE_NGINX_ACCESS_LOG_PATH",
    "SURGE_NGINX_TEMP_DIR",
)
"""Placeholders that differ between launchers (hosts, ports, runtime paths): no defaults."""

SERVER_PARAMS = "max_fails=3 fail_timeout=2s"
"""On every upstream server line (compose.yaml too). nginx's default, max_fails=1 with 10 s out,
turns two replicas' passing 503s into 10 s of 502 "no live upstreams"; with these a dead
replica still costs only a few retried connects per 2 s."""

SPILL_AT = StackSettings().nginx_spill_at
"""Requests in flight on the first replica before nginx sends more to the others (its `backup`
servers, SURGE_NGINX_SPILL_AT): light load packs onto one busy event loop, which costs about a
third less CPU per request than two half-idle ones (docs/performance.md); a burst or a fixed
concurrency beyond it uses every replica, and a failed first replica hands all to the others.
The first replica is a backup too, uncapped, so that it still takes requests beyond the cap
when the others are gone instead of nginx answering 502."""


def upstream_servers(ports: Iterable[int], host: str, spill_at: int = SPILL_AT) -> str:
    """The upstream block's server lines: the first replica capped at `spill_at` in flight,
    the rest its backups (0: no cap, every replica equal under least_conn)."""
    return upstream_lines([f"{host}:{p}" for p in ports], spill_at)


def upstream_lines(addresses: Iterable[str], spill_at: int = SPILL_AT) -> str:
    """upstream_servers for replicas at `host:port` addresses of their own (stack.netns)."""
    addresses = list(addresses)
    if not addresses:
        raise ValueError("nginx needs at least one upstream port")
    if spill_at <= 0 or len(addresses) == 1:
        return " ".join(f"server {a} {SERVER_PARAMS};" for a in addresses)
    first, *rest = addresses
    lines = [f"server {first} {SERVER_PARAMS} max_conns={spill_at};"]
    lines += [f"server {a} {SERVER_PARAMS} backup;" for a in [*rest, first]]
    return " ".join(lines)


_PATHS = (
    "SURGE_NGINX_PID",
    "SURGE_NGINX_ERROR_LOG",
    "SURGE_NGINX_ACCESS_LOG_PATH",
    "SURGE_NGINX_TEMP_DIR",
)


class NginxError(RuntimeError):
    """nginx refused the config, or did not start or stop in time; the message says why."""


def placeholders(template_text: str) -> set[str]:
    """The ${SURGE_...} names a template uses."""
    return set(PLACEHOLDER.findall(template_text))


def render_nginx_conf(template_path: Path | str, values: Mapping[str, str]) -> str:
    """The template with every ${SURGE_...} placeholder replaced; raises on a missing one."""
    text = Path(template_path).read_text(encoding="utf-8")
    foreign = sorted(k for k in values if not k.startswith("SURGE_"))
    if foreign:
        raise ValueError(f"only SURGE_ names are placeholders, got {foreign}")
    for key in _PATHS:
        if key in values and re.search(r'["\n;]', values[key]):
            raise ValueError(f"{key} must be a plain path, got {values[key]!r}")
    missing = sorted(placeholders(text) - set(values))
    if missing:
        raise KeyError(f"no value for nginx placeholder(s): {', '.join(missing)}")
    return Template(text).safe_substitute(values)


def knobs_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """DEFAULTS, overridden by the same names in the environment (e.g. SURGE_RATE_LIMIT=off)."""
    return knobs(stack_settings(environ))


def local_values(
    prefix: Path,
    *,
    port: int,
    status_port: int,
    upstream_ports: Iterable[int],
    host: str = "127.0.0.1",
    environ: Mapping[str, str] | None = None,
    upstreams: Iterable[str] | None = None,
    **overrides: str,
) -> dict[str, str]:
    """Values for a local nginx whose files all live under prefix (no root needed).

    upstreams: the replicas as `host:port` addresses, instead of upstream_ports on `host`.

    Knobs come from DEFAULTS, then the environment (environ, default os.environ), then overrides
    (full placeholder names, e.g. SURGE_RATE_LIMIT="off").
    """
    prefix = Path(prefix).resolve()
    settings = stack_settings(environ)
    spill_at = settings.nginx_spill_at
    if upstreams is not None:
        servers = upstream_lines(upstreams, spill_at)
    else:
        servers = upstream_servers(upstream_ports, host, spill_at)
    values = knobs(settings)
    values.update(
        {
            "SURGE_NGINX_LISTEN": f"{host}:{port}",
            "SURGE_NGINX_STATUS_LISTEN": f"127.0.0.1:{status_port}",
            "SURGE_NGINX_UPSTREAM": servers,
            "SURGE_NGINX_PID": str(prefix / "nginx.pid"),
            "SURGE_NGINX_ERROR_LOG": str(prefix / "logs" / "error.log"),
            "SURGE_NGINX_ACCESS_LOG_PATH": str(prefix / "logs" / "access.log"),
            "SURGE_NGINX_TEMP_DIR": str(prefix / "tmp"),
        }
    )
    values.update(overrides)
    return values


def nginx_binary() -> str:
    """SURGE_NGINX_BIN, else nginx on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH)."""
    for candidate in (stack_settings().nginx_bin, shutil.which("nginx")):
        if candidate:
            return candidate
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/bin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise NginxError(
        "nginx not found: run `make deps` (installs nginx-light) or set SURGE_NGINX_BIN"
    )


def _address(listen: str) -> tuple[str, int]:
    """(host, port) to reach a `listen` value: "8081" or "127.0.0.1:8081" (first word)."""
    first = listen.split()[0]
    host, _, port = first.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port)


class NginxServer:
    """One nginx master (foreground, `daemon off`) running the rendered template under prefix.

    prefix holds nginx.conf plus whatever the values put there (local_values: nginx.pid,
    logs/, tmp/). The master is our child while attached; the pid file finds it otherwise.
    """

    def __init__(
        self,
        prefix: Path | str,
        values: Mapping[str, str],
        *,
        template: Path | str = TEMPLATE,
        binary: str | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        """command_prefix: what the master runs under, e.g. `ip netns exec NS` (stack.netns)."""
        self.prefix = Path(prefix).resolve()
        self.values = dict(values)
        self.template = Path(template)
        self.binary = binary or nginx_binary()
        self.command_prefix = list(command_prefix)
        self.conf_path = self.prefix / "nginx.conf"
        self.startup_log = self.prefix / "logs" / "startup.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- files ----------------------------------------------------------------------------

    @property
    def pid_path(self) -> Path:
        return Path(self.values["SURGE_NGINX_PID"])

    @property
    def error_log(self) -> Path:
        return Path(self.values["SURGE_NGINX_ERROR_LOG"])

    @property
    def status_url(self) -> str:
        host, port = _address(self.values["SURGE_NGINX_STATUS_LISTEN"])
        return f"http://{host}:{port}/stub_status"

    @property
    def url(self) -> str:
        host, port = _address(self.values["SURGE_NGINX_LISTEN"])
        return f"http://{host}:{port}"

    def write_config(self) -> Path:
        """Render the template to prefix/nginx.conf and create the directories it names."""
        text = render_nginx_conf(self.template, self.values)
        for d in (
            self.prefix,
            self.startup_log.parent,
            Path(self.values["SURGE_NGINX_TEMP_DIR"]),
            self.pid_path.parent,
        ):
            d.mkdir(parents=True, exist_ok=True)
        for key in ("SURGE_NGINX_ERROR_LOG", "SURGE_NGINX_ACCESS_LOG_PATH"):
            target = self.values[key]
            if target.startswith("/") and not target.startswith("/dev/"):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(text, encoding="utf-8")
        return self.conf_path

    def argv(self, *extra: str) -> list[str]:
        """The master's foreground command line (extra: more flags, e.g. -t)."""
        directives = "daemon off;"
        if os.geteuid() == 0:
            # Without `user`, a root master runs its workers as nobody, who cannot write a run
            # directory under a root-only parent (temp files, micro-cache). A launcher already
            # running as root keeps its workers as root.
            directives += " user root;"
        return [
            self.binary,
            "-p",
            str(self.prefix),
            "-c",
            str(self.conf_path),
            "-e",
            str(self.startup_log),
            "-g",
            directives,
            *extra,
        ]

    def check(self) -> str:
        """Render and run `nginx -t`; returns its report, raises NginxError when it fails."""
        self.write_config()
        argv = [*self.command_prefix, *self.argv("-t")]  # -t binds: on its own host
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        report = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            raise NginxError(f"nginx -t rejected {self.conf_path}:\n{report}")
        return report

    # -- process --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs (our child, or the one the pid file names)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            try:
                if b"nginx" not in cmdline.read_bytes():
                    return None  # the pid was reused by another program
            except OSError:
                return None
        return pid if pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def answers(self) -> bool:
        """True when stub_status answers 200 (the master has bound and a worker accepts)."""
        try:
            with urllib.request.urlopen(self.status_url, timeout=1) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self, *, detached: bool = False, timeout: float = 15.0) -> None:
        """nginx -t, then start the master; returns once stub_status answers."""
        if self.running:
            raise NginxError(f"nginx already runs from {self.prefix} (pid {self.pid})")
        self.check()
        attached_on_main = not detached and threading.current_thread() is threading.main_thread()
        with self.startup_log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self.command_prefix, *self.argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=detached,
                # A preexec_fn is only safe to fork from the main thread.
                preexec_fn=die_with_parent(signal.SIGTERM) if attached_on_main else None,
            )
        if not detached:
            attach(self)
        deadline = time.monotonic() + timeout
        while not (self.answers() and self.pid_path.exists()):
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited at start:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise NginxError(
                    f"nginx did not answer within {timeout:.0f} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def reload(self, values: Mapping[str, str] | None = None, *, timeout: float = 15.0) -> None:
        """Re-render (with new values), nginx -t, SIGHUP; returns once new workers replaced
        the old ones (Linux), so requests after it see the new config."""
        pid = self.pid
        if pid is None:
            raise NginxError(f"nginx does not run from {self.prefix}")
        if values is not None:
            self.values = dict(values)
        self.check()
        before = child_pids(pid)
        os.kill(pid, signal.SIGHUP)
        if not before:
            return  # no /proc: cannot see workers change
        deadline = time.monotonic() + timeout
        while True:
            now = child_pids(pid)
            if now and not (now & before) and self.answers():
                return
            if time.monotonic() > deadline:
                raise NginxError(
                    f"nginx did not reload within {timeout:.0f} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: in-flight requests finish), then SIGTERM, then SIGKILL."""
        pid = self.pid
        if pid is None:
            self._reap()
            return
        workers = child_pids(pid)
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if sig == signal.SIGKILL:
                for worker in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if wait_gone(pid, wait, self._proc):
                break
        self._reap()

    def _reap(self) -> None:
        detach(self)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
            self._proc = None

    def _log_tail(self, lines: int = 20) -> str:
        out = []
        for log in (self.startup_log, self.error_log):
            with contextlib.suppress(OSError):
                out.extend(log.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    def __enter__(self) -> NginxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "DEFAULTS",
    "KNOBS",
    "LAYOUT",
    "SERVER_PARAMS",
    "SPILL_AT",
    "TEMPLATE",
    "NginxError",
    "NginxServer",
    "knobs",
    "knobs_from_env",
    "local_values",
    "nginx_binary",
    "placeholders",
    "render_nginx_conf",
    "upstream_lines",
    "upstream_servers",
]
