"""surge across a real network on one machine: hosts as Linux network namespaces.

    Network(["edge", "api1", ...])     one namespace per host, each with eth0 on one bridge
                                       (10.A.B.0/24; the bridge itself, .1, is this root
                                       namespace's way in), every host's outgoing packets
                                       delayed (delay_us, 500: ~1 ms round trip host to host)
    SurgeNet(work, ...)                the surge topology on it: postgres, redis, api1, api2
                                       (one Granian replica each), edge (nginx), optionally a
                                       client host for a load generator; seeded over the network

The delay is `tc qdisc ... netem` on each host's eth0 where the kernel has netem; where it has
not (this project's development VM), stack.netdelay holds every outgoing packet for the delay
behind an iptables NFQUEUE rule. check_prerequisites() says which, and fails loudly (root,
`ip netns`, veth, bridge, one of the two delays) rather than letting a test skip.

Names are unique per run (sgn<5 hex digits>...), so several runs coexist; each run writes its
owner (pid and start time) to STATE_DIR before it creates anything, and sweep() removes the
namespaces and links of runs whose owner is gone. Teardown (the context manager's exit, also on
a failed test) stops the servers, kills whatever still runs in each namespace, deletes the links
and namespaces, then sweeps.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from core.settings import StoreSettings, from_env
from stack.nginx import NginxServer, local_values
from stack.servers import (
    PostgresServer,
    RedisServer,
    die_with_parent,
    granian_command,
    log_tail,
    pid_alive,
    process_start_time,
    wait_for,
)

PREFIX = "sgn"
STATE_DIR = Path("/run/surge-netns")
RUN_NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{5}})")
DELAY_US = 500
"""Each host's outgoing delay: ~1 ms round trip between two hosts."""
ROOT = Path(__file__).resolve().parent.parent

API_PORT = 8000
HTTP_PORT = 8080
STATUS_PORT = 8081
PG_PORT = 5432
REDIS_PORT = 6379


class NetnsError(RuntimeError):
    """The machine cannot build the topology, or building it failed; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _in(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _ip("netns", "exec", netns, *cmd, check=check)


# --------------------------------------------------------------------------------------------
# prerequisites


def check_prerequisites() -> str:
    """The delay this machine can give ("netem" or "nfqueue"); NetnsError says what is missing.

    Probes with a throwaway namespace and veth pair of its own (removed again)."""
    if os.geteuid() != 0:
        raise NetnsError("network namespaces need root (ip netns add): run as root")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            raise NetnsError(f"{tool} not found: apt-get install {package}")
    probe = f"{PREFIX}probe{os.getpid() % 100_000}"
    link = f"{PREFIX}p{os.getpid() % 100_000}"
    try:
        _ip("netns", "add", probe)
        _ip("link", "add", link, "type", "veth", "peer", "name", link + "b")
        _ip("link", "set", link + "b", "netns", probe)
        bridge = _ip("link", "add", link + "r", "type", "bridge", check=False)
        if bridge.returncode != 0:
            raise NetnsError(f"cannot make a bridge: {bridge.stderr.strip()}")
        _ip("link", "del", link + "r")
        netem = _in(probe, "tc", "qdisc", "add", "dev", link + "b", "root", "netem", "delay",
                    "500us", check=False)  # fmt: skip
        if netem.returncode == 0:
            return "netem"
        if shutil.which("iptables") is None:
            raise NetnsError(
                f"this kernel has no netem ({netem.stderr.strip()}) and iptables is missing for "
                "the NFQUEUE delay: `make deps` installs it (apt-get install iptables)"
            )
        rule = _in(probe, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", link + "b",
                   "-j", "NFQUEUE", "--queue-num", "0", check=False)  # fmt: skip
        if rule.returncode != 0:
            raise NetnsError(
                f"no netem ({netem.stderr.strip()}) and no NFQUEUE target either: "
                f"{rule.stderr.strip()}"
            )
        return "nfqueue"
    finally:
        _ip("link", "del", link, check=False)
        _ip("netns", "del", probe, check=False)


# --------------------------------------------------------------------------------------------
# cleanup


def _owner_alive(state: Mapping[str, Any]) -> bool:
    pid = int(state.get("pid", 0))
    return pid > 0 and pid_alive(pid) and process_start_time(pid) == state.get("start_time")


def _kill_in(netns: str) -> None:
    """SIGKILL every process left in a namespace (until none is, or 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = _ip("netns", "pids", netns, check=False).stdout.split()
        pids = [int(p) for p in listed if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _remove_run(run_id: str) -> None:
    """Every namespace and link named for run_id, and what runs in those namespaces."""
    name = PREFIX + run_id
    for netns in _ip("netns", "list", check=False).stdout.split("\n"):
        ns = netns.split(" ")[0]
        if ns.startswith(name):
            _kill_in(ns)
            _ip("netns", "del", ns, check=False)
    links = _ip("-o", "link", "show", check=False).stdout
    for match in re.finditer(rf"^\d+: ({name}[^:@\s]*)", links, re.M):
        _ip("link", "del", match[1], check=False)
    (STATE_DIR / f"{run_id}.json").unlink(missing_ok=True)


def sweep() -> list[str]:
    """Remove the leftovers of runs whose owner process is gone; the run ids removed.

    A run whose state file is missing (it never wrote one, or it was removed) counts as gone
    too: every run writes its file before it creates anything."""
    live = set()
    for path in STATE_DIR.glob("*.json") if STATE_DIR.exists() else ():
        with contextlib.suppress(OSError, ValueError):
            if _owner_alive(json.loads(path.read_text())):
                live.add(path.stem)
    seen = set()
    names = _ip("netns", "list", check=False).stdout.split()
    names += re.findall(r"^\d+: ([^:@\s]+)", _ip("-o", "link", "show", check=False).stdout, re.M)
    for name in names:
        match = RUN_NAME.match(name)
        if match:
            seen.add(match[1])
    for path in STATE_DIR.glob("*.json") if STATE_DIR.exists() else ():
        seen.add(path.stem)
    gone = sorted(seen - live)
    for run_id in gone:
        _remove_run(run_id)
    return gone


# --------------------------------------------------------------------------------------------
# the network


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    link: str
    """The root-side end of its veth pair (a bridge port): set down, the host is cut off."""

    @property
    def prefix(self) -> list[str]:
        """What runs a command on this host."""
        return ["ip", "netns", "exec", self.netns]


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.A.B.0/24 that no route or address of this machine touches."""
    used = _ip("-4", "route", "show", "table", "all", check=False).stdout
    used += _ip("-4", "-o", "addr", "show", check=False).stdout
    found = re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", used)
    taken = [ipaddress.ip_network(m, strict=False) for m in found]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken if not t.is_loopback):
            return net
    raise NetnsError("no free 10.x.y.0/24 subnet found")


class Network:
    """Hosts on one bridge, each delayed by delay_us on the way out; a context manager."""

    def __init__(self, names: Sequence[str], delay_us: int = DELAY_US) -> None:
        self.names = list(names)
        self.delay_us = delay_us
        self.run_id = f"{random.getrandbits(20):05x}"
        self.bridge = f"{PREFIX}{self.run_id}br"
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self.hosts = {
            name: Host(
                name,
                f"{PREFIX}{self.run_id}-{name}",
                str(addresses[i + 1]),
                f"{PREFIX}{self.run_id}{i:x}",
            )
            for i, name in enumerate(self.names)
        }
        self.delay = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # -- building ---------------------------------------------------------------------------

    def __enter__(self) -> Network:
        self.delay = check_prerequisites()
        sweep()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}
        (STATE_DIR / f"{self.run_id}.json").write_text(json.dumps(state))
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        prefix_len = self.subnet.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{prefix_len}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", host.link + "p")
            _ip("link", "set", host.link + "p", "netns", host.netns)
            _ip("link", "set", host.link, "master", self.bridge, "up")
            _in(host.netns, "ip", "link", "set", host.link + "p", "name", "eth0")
            _in(host.netns, "ip", "addr", "add", f"{host.address}/{prefix_len}", "dev", "eth0")
            _in(host.netns, "ip", "link", "set", "eth0", "up")
            _in(host.netns, "ip", "link", "set", "lo", "up")
            self._delay(host)

    def _delay(self, host: Host) -> None:
        if self.delay == "netem":
            _in(host.netns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay",
                f"{self.delay_us}us")  # fmt: skip
            return
        ready = STATE_DIR / f"{self.run_id}-{host.name}.ready"
        proc = self.popen(
            host,
            [sys.executable, "-m", "stack.netdelay", "--delay-us", str(self.delay_us),
             "--ready-file", str(ready)],
        )  # fmt: skip
        wait_for(ready.exists, timeout=10, what=f"the delay of {host.name}",
                 alive=lambda: proc.poll() is None)  # fmt: skip
        ready.unlink()
        _in(host.netns, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0",
            "-j", "NFQUEUE", "--queue-num", "0")  # fmt: skip

    # -- using ------------------------------------------------------------------------------

    def popen(
        self,
        host: Host,
        cmd: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        """A process on `host`, ended by close() (and by the kernel when we die)."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [*host.prefix, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self._procs.append(proc)
        return proc

    def cut(self, name: str) -> None:
        """Cut a host off the network: its bridge port down (its eth0 loses carrier)."""
        _ip("link", "set", self.hosts[name].link, "down")

    def restore(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].link, "up")

    def losses(self) -> dict[str, int]:
        """Counters since the hosts were built, summed over them: packets the delay queues
        dropped (queue full, or the delay process's socket full) and TCP segments sent again."""
        out = {"delay_queue_dropped": 0, "tcp_retransmitted": 0}
        for host in self.hosts.values():
            queues = _in(host.netns, "cat", "/proc/net/netfilter/nfnetlink_queue", check=False)
            for line in queues.stdout.splitlines():  # fields 6 and 7: queue, user dropped
                fields = line.split()
                out["delay_queue_dropped"] += int(fields[5]) + int(fields[6])
            snmp = _in(host.netns, "cat", "/proc/net/snmp").stdout.splitlines()
            tcp = [line.split()[1:] for line in snmp if line.startswith("Tcp:")]
            out["tcp_retransmitted"] += int(dict(zip(tcp[0], tcp[1], strict=True))["RetransSegs"])
        return out

    def connect_ms(self, src: str, dst: str, port: int, count: int = 20) -> float:
        """Median TCP connect time from host src to dst:port (one round trip), in ms."""
        code = (
            "import socket,sys,time\n"
            "ts=[]\n"
            f"for _ in range({count}):\n"
            "    t=time.perf_counter()\n"
            f"    socket.create_connection(({self.hosts[dst].address!r},{port}),5).close()\n"
            "    ts.append(time.perf_counter()-t)\n"
            "print(sorted(ts)[len(ts)//2]*1000)\n"
        )
        done = _in(self.hosts[src].netns, sys.executable, "-c", code)
        return float(done.stdout.strip())

    # -- tearing down -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop our processes, kill what is left in the namespaces, delete everything."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._procs.clear()
        _remove_run(self.run_id)
        sweep()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# surge on it


@dataclass
class SurgeNet:
    """The surge topology on a Network: `with SurgeNet(work) as top: top.url`.

    env: more SURGE_ settings of the replicas (and the seeder), e.g. SURGE_LOCAL_CACHE_MB."""

    work: Path
    students: int = 2_000
    bookings: int = 1_000
    env: Mapping[str, str] = field(default_factory=dict)
    client: bool = False
    """Also a `client` host, for a load generator one network hop from nginx."""
    delay_us: int = DELAY_US
    replicas: tuple[str, ...] = ("api1", "api2")

    def __post_init__(self) -> None:
        names = ["edge", *self.replicas, "redis", "postgres"] + (["client"] if self.client else [])
        self.net = Network(names, self.delay_us)
        self.api: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.net['edge'].address}:{HTTP_PORT}"

    def replica_url(self, name: str) -> str:
        return f"http://{self.net[name].address}:{API_PORT}"

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def surge_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
        env.update({
            "SURGE_DATABASE_URL": self.postgres.url,
            "SURGE_REDIS_URL": self.redis.url,
            "SURGE_STUDENTS": str(self.students),
            "SURGE_BOOKINGS": str(self.bookings),
            **self.env,
        })  # fmt: skip
        return env

    def __enter__(self) -> SurgeNet:
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # Postgres runs as the postgres user and must enter it
        self.net.__enter__()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        pg, rd = self.net["postgres"], self.net["redis"]
        self.postgres = PostgresServer(
            self.work / "pg", PG_PORT, durable=False, host=pg.address, command_prefix=pg.prefix
        ).start()
        self.redis = RedisServer(
            self.work / "redis", REDIS_PORT, host=rd.address, command_prefix=rd.prefix,
            config={"maxmemory": "3gb", "maxmemory-policy": "noeviction"},
        ).start()  # fmt: skip
        env = self.surge_env()
        seeded = subprocess.run(
            [sys.executable, "-m", "seeder", "--no-progress"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        if seeded.returncode != 0:
            raise NetnsError(f"the seeder failed over the network:\n{seeded.stderr[-2000:]}")
        self.seed_output = seeded.stdout
        backpressure = from_env(StoreSettings, env).redis_pool_size
        for name in self.replicas:
            host = self.net[name]
            cmd = granian_command("api.app:create_app", API_PORT, backpressure, host.address)
            log = self.work / f"{name}.log"
            self.api[name] = self.net.popen(host, cmd, log=log, env=env)
        for name, proc in self.api.items():
            wait_for(
                lambda n=name: _http_ok(f"{self.replica_url(n)}/ready"),  # type: ignore[misc]
                timeout=120,
                what=f"replica {name}",
                alive=lambda p=proc: p.poll() is None,  # type: ignore[misc]
                on_death=lambda n=name: log_tail(self.work / f"{n}.log"),  # type: ignore[misc]
            )
        edge = self.net["edge"]
        values = local_values(
            self.work / "nginx",
            port=HTTP_PORT,
            status_port=STATUS_PORT,
            upstream_ports=[],
            host=edge.address,
            upstreams=[f"{self.net[n].address}:{API_PORT}" for n in self.replicas],
            environ={"SURGE_RATE_LIMIT": "off", **self.env},
            SURGE_NGINX_STATUS_LISTEN=f"{edge.address}:{STATUS_PORT}",
        )
        self.nginx = NginxServer(self.work / "nginx", values, command_prefix=edge.prefix)
        self.nginx.start()

    @property
    def access_log(self) -> Path:
        """The edge nginx's access log (written when SURGE_NGINX_ACCESS_LOG=on in env)."""
        return self.work / "nginx" / "logs" / "access.log"

    def pids(self) -> dict[str, list[int]]:
        """Process ids per tier: nginx (master and workers), each replica, Redis, Postgres."""
        from stack.servers import child_pids

        def tree(pid: int | None) -> list[int]:
            return [pid, *sorted(child_pids(pid))] if pid else []

        out = {"nginx": tree(self.nginx.pid)}
        out |= {name: tree(proc.pid) for name, proc in self.api.items()}
        out |= {"redis": tree(self.redis.pid), "postgres": tree(self.postgres.pid)}
        return out

    def close(self) -> None:
        for name in self.net.names:  # a cut link would stall the servers' clean stops
            with contextlib.suppress(NetnsError):
                self.net.restore(name)
        for server in ("nginx", "redis", "postgres"):
            with contextlib.suppress(Exception):
                getattr(self, server).stop()
        self.net.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


__all__ = ["DELAY_US", "Host", "NetnsError", "Network", "SurgeNet", "check_prerequisites", "sweep"]
