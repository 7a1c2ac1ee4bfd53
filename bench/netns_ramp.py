"""bench/report.py's `netns_ramp` step: the k6 reference ramp across a network, beside its floor.

surge as separate hosts on this machine (stack/netns.py's SurgeNet): `edge` (nginx), `api1` and
`api2` (a Granian replica each, with its own copy of the records on, as in production), `redis`,
`postgres`, and a `client` host for k6, each a network namespace on one bridge, every host's
packets delayed 500 µs on the way out (~1 ms round trip host to host). Its stores are its own,
seeded over the network with a dataset of NETNS_STUDENTS (the make up stack's are not touched),
and all of it is removed at the end, even on failure.

The same k6 run (k6/reference-ramp.js, the profile's ramp_env) from the client host, first
against the floor: an nginx on the edge host answering every lookup itself with a fixed record
(bench/floor.py's config), then against surge's nginx on the same host. CPU per tier from
/proc (bench/report.py's Measure): nginx, each replica, Redis, Postgres, the hosts' packet
delays (stack/netdelay.py, where the kernel has no netem) and k6.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from bench import say, tiers
from bench.client_series import ClientSeries
from bench.floor import CONF, PADDING
from bench.k6 import K6, k6_run
from bench.resources import MeasuringBench as BenchLike
from bench.sampling import Measure
from seeder.generate import FIRST_STUDENT_ID
from stack.netns import API_PORT, HTTP_PORT, REDIS_PORT, SurgeNet
from stack.nginx import nginx_binary
from stack.servers import child_pids, wait_for

ROOT = Path(__file__).resolve().parent.parent
NETNS_STUDENTS, NETNS_BOOKINGS = 100_000, 50_000
"""Seeded over the bridge into the step's own stores in under half a minute; each replica's copy
holds all of it, as a production replica holds its dataset."""
FLOOR_PORT = 8090
SCRIPT = "reference-ramp"
LOOKUP_LINE = re.compile(r'^surge_lookups_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', re.M)


def lookups(top: SurgeNet) -> dict[str, float]:
    """Lookup outcomes (local_hit, redis_hit, ...) summed over the replicas, from /metrics."""
    total: dict[str, float] = {}
    for name in top.replicas:
        text = httpx.get(f"{top.replica_url(name)}/metrics", timeout=5).text
        for outcome, value in LOOKUP_LINE.findall(text):
            total[outcome] = total.get(outcome, 0.0) + float(value)
    return total


def copies_complete(top: SurgeNet) -> bool:
    """Every replica's own copy holds the whole dataset (its /ready says so)."""
    for name in top.replicas:
        try:
            ready = httpx.get(f"{top.replica_url(name)}/ready", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        if ready.get("components", {}).get("copy") != "complete":
            return False
    return True


def netdelay_pids(top: SurgeNet) -> dict[str, list[int]]:
    """The packet delay process of each host, as `netdelay-<host>` (none where netem delays):
    each is one Python thread, so one of them saturated shows by itself."""
    groups: dict[str, list[int]] = {}
    for host in top.net.hosts.values():
        listed = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True, timeout=10
        ).stdout.split()
        for pid in map(int, listed):
            with contextlib.suppress(OSError):
                if b"stack.netdelay" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    groups.setdefault(f"netdelay-{host.name}", []).append(pid)
    return groups


def losses_since(top: SurgeNet, before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in top.net.losses().items()}


@contextlib.contextmanager
def floor_on_edge(top: SurgeNet, work: Path) -> Any:
    """bench/floor.py's nginx, on the edge host's address, until the block ends."""
    prefix = work / "floor"
    prefix.mkdir(parents=True, exist_ok=True)
    edge = top.net["edge"]
    conf = prefix / "nginx.conf"
    conf.write_text(CONF.format(prefix=prefix, host=edge.address, port=FLOOR_PORT, padding=PADDING))
    proc = top.net.popen(edge, [nginx_binary(), "-p", str(prefix), "-c", str(conf)])
    url = f"http://{edge.address}:{FLOOR_PORT}"
    try:
        wait_for(
            lambda: _answers(f"{url}/students/{FIRST_STUDENT_ID}"),
            timeout=10,
            what="the floor nginx on edge",
            alive=lambda: proc.poll() is None,
        )
        yield url, proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def k6_from_client(
    top: SurgeNet, url: str, env: Mapping[str, str], timeout: int, work: Path
) -> dict[str, Any]:
    """One k6 run of the reference ramp on the client host: its summary's figures."""
    prefix = top.net["client"].prefix
    return k6_run(SCRIPT, url, {**top.surge_env(), **env}, timeout, work, prefix=prefix)


def step(bench: BenchLike) -> dict[str, Any]:
    if not K6.exists():
        raise RuntimeError(f"{K6} is missing: `make deps` installs it")
    p = bench.p
    ramp_env = dict(p.get("ramp_env", {}))
    timeout = int(p.get("k6_timeout", 900))
    env = {"SURGE_STUDENTS": str(NETNS_STUDENTS), **ramp_env}
    # Not under bench.work (private to root): Postgres runs as the postgres user and must enter.
    work = Path(tempfile.mkdtemp(prefix="surge-bench-netns-"))
    work.chmod(0o755)
    try:
        return _run(work, env, ramp_env, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(
    work: Path, env: Mapping[str, str], ramp_env: Mapping[str, str], timeout: int
) -> dict[str, Any]:
    k6_work = work / "k6"
    k6_work.mkdir(parents=True)
    runs: dict[str, dict[str, Any]] = {}
    say(f"netns_ramp: building the hosts, seeding {NETNS_STUDENTS:,} students over the bridge")
    started = time.monotonic()
    # The edge nginx writes its access log: its own view of each second (bench/tiers.py).
    edge_env = {"SURGE_NGINX_ACCESS_LOG": "on"}
    with SurgeNet(work / "net", NETNS_STUDENTS, NETNS_BOOKINGS, env=edge_env, client=True) as top:
        wait_for(lambda: copies_complete(top), timeout=300, what="the replicas' copies whole")
        built = time.monotonic() - started
        say(f"netns_ramp: up and whole in {built:.0f} s ({top.net.delay} delay)")
        delays = netdelay_pids(top)

        def groups() -> dict[str, list[int]]:
            found = top.pids()
            out = {"nginx": found["nginx"]}
            out |= {f"api-{name.removeprefix('api')}": found[name] for name in top.replicas}
            out |= {"redis": found["redis"], "postgres": found["postgres"]}
            return out | delays

        with floor_on_edge(top, work) as (floor_url, floor_proc):
            floor_pids = [floor_proc.pid, *sorted(child_pids(floor_proc.pid))]  # its worker
            lost = top.net.losses()
            with Measure({"nginx": floor_pids, **delays}, {}) as m:
                run = k6_from_client(top, floor_url, env, timeout, k6_work)
            runs["floor"] = m.attach(run, "k6")
            runs["floor"]["losses"] = losses_since(top, lost)
        say(f"netns_ramp floor: {_line(runs['floor'])}")

        before, lost = lookups(top), top.net.losses()
        with ClientSeries(host=top.net.gateway) as client:
            since = time.time()
            with Measure(groups(), {}, lambda: {"postgres": top.pids()["postgres"]}) as m:
                run = k6_from_client(top, top.url, {**env, **client.k6_env}, timeout, k6_work)
            surge = m.attach(run, "k6")
            surge["losses"] = losses_since(top, lost)
            tiers.attach_views(surge, top.access_log, client, since)
        after = lookups(top)
        surge["store"]["lookups"] = {
            k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)
        }
        say(f"netns_ramp surge: {_line(surge)}")
        rtt = {
            "client-edge": top.net.connect_ms("client", "edge", HTTP_PORT),
            "edge-api1": top.net.connect_ms("edge", "api1", API_PORT),
            "api1-redis": top.net.connect_ms("api1", "redis", REDIS_PORT),
        }
        delay = top.net.delay
    shape = ", ".join(f"{k}={v}" for k, v in ramp_env.items()) or "the script's default stages"
    return {
        "how": f"`k6 run k6/{SCRIPT}.js` ({shape}, SURGE_STUDENTS={NETNS_STUDENTS:,}) from a "
        "client host, across network namespaces on one bridge (stack/netns.py's SurgeNet): "
        "nginx on `edge`, one Granian replica each on `api1` and `api2` with its own copy of the "
        "records on (the whole dataset, as in production; nginx sends api2 only what exceeds "
        "api1's in-flight cap, stack/nginx.py's SPILL_AT), Redis and Postgres on hosts of their "
        f"own, every host's packets delayed 500 µs on the way out ({delay}); TCP connect "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in rtt.items())
        + f". Stores of its own, seeded over the bridge ({NETNS_STUDENTS:,} students, "
        f"{NETNS_BOOKINGS:,} bookings; built and whole in {built:.0f} s), removed after. The "
        "same k6 run first against `floor`, an nginx on the edge host answering every lookup "
        "itself with a fixed record (bench/floor.py's config), then against `surge`. "
        "`netdelay-<host>`: each host's packet delay process (stack/netdelay.py), part of the "
        "network.",
        "runs": {"surge": surge, "floor": runs["floor"]},
        "rtt_ms": rtt,
    }


def _line(run: Mapping[str, Any]) -> str:
    return (
        f"{run['rps']:,.0f} req/s, failed {run['errors']:.0f}, p50 {run['p50_ms']:.1f} ms, "
        f"p95 {run['p95_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms; the delay queues dropped "
        f"{run['losses']['delay_queue_dropped']:,} packets, TCP retransmitted "
        f"{run['losses']['tcp_retransmitted']:,} segments; the machine's worst stall "
        f"{run.get('stall_ms_max', 0):.0f} ms"
    )
