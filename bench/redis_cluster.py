"""bench/report.py's `redis_cluster` step: one Redis against a Redis Cluster, in the same run.

Started here on free loopback ports, in a temporary directory, and removed at the end even on
failure: a single redis-server and a cluster of 3 masters with a replica each (stack/servers.py's
RedisServer and RedisClusterServer, as tests/integration/test_cluster.py runs them). Both are
filled by the seeder (`seeder.seed`) from the bench's Postgres, which must already hold the
dataset the settings name: the seeder then only reads it (refused otherwise, so that a bench
never reloads someone's Postgres).

One surge replica (one Granian worker) per Redis, with its own copy off (SURGE_LOCAL_CACHE_MB=0)
so that every lookup is an HGET, and wrk straight to it (no nginx: nginx's cost is the same for
both and would only share the two cores with the tier compared). The same wrk run of random
student ids against each, rounds alternating, CPU per process from /proc (bench/report.py's
Measure): the replica, every Redis process (the cluster's six summed in the figures, listed one by
one in the CPU table), Postgres.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench import say
from bench.api import answers
from bench.replicas import cpu_seconds
from bench.resources import MeasuringBench as BenchLike
from bench.sampling import median_run
from bench.wrk import random_students
from core.contract import BOOKINGS, STUDENTS
from core.settings import Settings
from seeder import postgres, seed
from seeder.generate import FIRST_STUDENT_ID
from stack.launcher import CLUSTER_NODE_TIMEOUT_MS
from stack.servers import (
    RedisClusterServer,
    RedisServer,
    child_pids,
    free_cluster_ports,
    free_port,
    granian_command,
    stop_all,
    stop_children,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
SINGLE, CLUSTER = "single Redis", "Redis Cluster (3 masters + 3 replicas)"
MASTERS = 3
CONNECTIONS = 64
"""wrk's connections, whatever the profile's: one Granian worker at -c256 queues ~90 ms per
request, and the Redis replies read that late cross SURGE_REDIS_TIMEOUT (0.1 s) and fall back to
Postgres (measured: 151 lookups of one cluster run), which is not the tier being compared."""
IDLE_S = 5.0
"""Seconds of no load over which each Redis process's own CPU is sampled: a cluster's nodes
ping each other and their replicas whatever the traffic."""


def check_postgres_holds(settings: Settings) -> None:
    """Refuse unless Postgres holds exactly the dataset the settings name: otherwise the seeder
    would reload it, and this step only means to read it."""
    with psycopg.connect(settings.stores.database_url, connect_timeout=5) as conn:
        wanted = settings.dataset
        for dataset, rows in ((STUDENTS, wanted.students), (BOOKINGS, wanted.bookings)):
            try:
                loaded = postgres.loaded(conn, dataset.name)
            except psycopg.Error:
                loaded = None
            if loaded is None or (loaded.seed, loaded.rows) != (settings.dataset.seed, rows):
                raise RuntimeError(
                    f"Postgres at {settings.stores.database_url} does not hold {dataset.name} "
                    f"of seed {wanted.seed} with {rows:,} rows ({loaded}): seed it first "
                    "(`make up`)"
                )


def quiet(nodes: list[RedisServer], timeout: float = 120.0) -> None:
    """Wait until no node writes a snapshot (the seeder asks for one after a fill): a fork
    writing an RDB would take CPU from the runs and is no part of a lookup's cost."""

    wait_for(
        lambda: all(map(_snapshot_done, nodes)), timeout=timeout, what="Redis snapshots written"
    )


def _snapshot_done(node: RedisServer) -> bool:
    client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
    try:
        info = client.info("persistence")
        return not info.get("rdb_bgsave_in_progress") and not info.get("aof_rewrite_in_progress")
    finally:
        client.close()


def redis_groups(single: RedisServer, cluster: RedisClusterServer) -> dict[str, dict[str, int]]:
    """Pid per Redis process of each configuration; a cluster node named by its role now
    (redis-m1.., redis-r1..), so that each stays one single-threaded process to the verdicts."""
    out: dict[str, dict[str, int]] = {SINGLE: {"redis": _pid(single)}, CLUSTER: {}}
    masters = replicas = 0
    for node in cluster.nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
        try:
            role = client.info("replication")["role"]
        finally:
            client.close()
        if role == "master":
            masters += 1
            out[CLUSTER][f"redis-m{masters}"] = _pid(node)
        else:
            replicas += 1
            out[CLUSTER][f"redis-r{replicas}"] = _pid(node)
    return out


def commandstats(nodes: list[RedisServer]) -> dict[str, dict[str, float]]:
    """INFO commandstats summed over the nodes: calls and server µs per command, so that a
    difference in Redis CPU can be read as which commands it went to."""
    out: dict[str, dict[str, float]] = {}
    for node in nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
        try:
            for name, row in client.info("commandstats").items():
                entry = out.setdefault(name.removeprefix("cmdstat_"), {"calls": 0, "usec": 0})
                entry["calls"] += float(row["calls"])
                entry["usec"] += float(row["usec"])
        finally:
            client.close()
    return out


def _pid(server: RedisServer) -> int:
    if server.pid is None:
        raise RuntimeError(f"{server!r} has no pid")
    return server.pid


@contextlib.contextmanager
def stores(work: Path) -> Iterator[tuple[RedisServer, RedisClusterServer]]:
    """A single Redis and a cluster on free loopback ports; stopped and removed after."""
    root = Path(tempfile.mkdtemp(prefix="surge-bench-cluster-", dir=work))
    single = RedisServer(root / "single", free_port())
    # make up's node timeout: how often the nodes gossip follows from it
    cluster = RedisClusterServer(
        root / "cluster",
        free_cluster_ports(2 * MASTERS),
        masters=MASTERS,
        node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS,
    )
    try:
        single.start()
        cluster.start()
        yield single, cluster
    finally:
        try:
            stop_all([cluster, single])
        finally:
            shutil.rmtree(root, ignore_errors=True)


def step(bench: BenchLike) -> dict[str, Any]:
    settings, p = bench.settings, bench.p
    seconds, rounds, conns = int(p["seconds"]), int(p["rounds"]), CONNECTIONS
    last_id = FIRST_STUDENT_ID + settings.dataset.students - 1
    check_postgres_holds(settings)
    runs: dict[str, list[dict[str, Any]]] = {SINGLE: [], CLUSTER: []}
    seeded: dict[str, float] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        single, cluster = stack.enter_context(stores(bench.work))
        stack.callback(stop_children, procs.values())
        on = {
            SINGLE: settings.replace(redis_url=single.url, redis_mode="single"),
            CLUSTER: settings.replace(redis_url=cluster.url, redis_mode="cluster"),
        }
        for name, s in on.items():
            say(f"redis_cluster: seeding the {name} at {s.stores.redis_url} from Postgres")
            started = time.monotonic()
            seed(s)
            seeded[name] = time.monotonic() - started
            say(f"redis_cluster: {name} seeded in {seeded[name]:.1f} s")
        quiet([single, *cluster.nodes])
        wait_for(cluster.healthy, timeout=60, what="Redis Cluster healthy, replicas in sync")
        pids = redis_groups(single, cluster)

        ports = {name: free_port() for name in on}
        for name, s in on.items():
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SURGE_DATABASE_URL": s.stores.database_url,
                "SURGE_REDIS_URL": s.stores.redis_url,
                "SURGE_REDIS_MODE": s.stores.redis_mode,
                # Off: every lookup an HGET, so the runs compare the Redis tiers, not the copy.
                "SURGE_LOCAL_CACHE_MB": "0",
            }
            cmd = granian_command(
                "api.app:create_app", ports[name], settings.stores.redis_pool_size
            )
            procs[name] = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        for name, port in ports.items():
            wait_for(partial(answers, port, f"/students/{last_id}"), timeout=60, what=f"{name} api")
        every = [pid for group in pids.values() for pid in group.values()]
        before = {pid: cpu_seconds([pid]) for pid in every}
        time.sleep(IDLE_S)
        idle = {
            name: {k: round((cpu_seconds([v]) - before[v]) / IDLE_S, 4) for k, v in group.items()}
            for name, group in pids.items()
        }
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name in on:  # warm-up: connections, the Redis pool, the cluster client's slot map
            random_students(url[name], 2, conns, last_id)
        for node in [single, *cluster.nodes]:  # from here on: the runs' commands only
            node.call("CONFIG", "RESETSTAT")
        for i in range(rounds):
            for name in list(on)[:: 1 if i % 2 == 0 else -1]:
                groups = {
                    "api-1": [procs[name].pid, *sorted(child_pids(procs[name].pid))],
                    **{k: [v] for k, v in pids[name].items()},
                }
                run = bench.measured(
                    groups,
                    {"api-1": ports[name]},
                    partial(random_students, url[name], seconds, conns, last_id),
                    "wrk",
                )
                say(
                    f"redis_cluster {name}: {run['rps']:,.0f} req/s, p99 {run['p99_ms']:.1f} ms, "
                    f"errors {run['errors']:.0f}"
                )
                runs[name].append(run)
        commands = {SINGLE: commandstats([single]), CLUSTER: commandstats(cluster.nodes)}
    return {
        "how": f"A single redis-server and a Redis Cluster of {MASTERS} masters with a replica "
        "each, started on free loopback ports for this step, each filled by the seeder from the "
        f"bench's Postgres ({settings.dataset.students:,} students, "
        f"{settings.dataset.bookings:,} bookings; "
        + ", ".join(f"{n}: {s:.0f} s" for n, s in seeded.items())
        + "), then removed. One surge replica (one Granian worker) against each, its own copy off "
        "(SURGE_LOCAL_CACHE_MB=0: every lookup an HGET), and "
        f"`wrk -t1 -c{conns} -d{seconds}s -s bench/random_students.lua` straight to it (no "
        f"nginx); {rounds} alternating round(s), the median shown, a 2 s warm-up each. `redis` "
        "is the single Redis; `redis-m*` and `redis-r*` the cluster's masters and replicas, "
        "summed in the per-tier figures below. Each Redis process's CPU with no load "
        f"({IDLE_S:.0f} s before the runs, both replicas started) is shown beside it: part of "
        "every run's.",
        "runs": {name: median_run(r) for name, r in runs.items()},
        "redis_idle_cores": idle,
        "notes": [commands_note(commands)],
        "seed_s": seeded,
    }


def commands_note(commands: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The commands each configuration's Redis served over every round, warm-ups excepted."""
    rows = [
        "Commands Redis served over all the rounds (INFO commandstats, every node summed; "
        "µs: Redis's own time in the command):",
        "",
        "| configuration | command | calls | µs total | µs per call |",
        "|---|---|---|---|---|",
    ]
    for name, stats in commands.items():
        top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:6]
        for command, row in top:
            per = row["usec"] / row["calls"] if row["calls"] else 0.0
            rows.append(
                f"| {name} | {command} | {row['calls']:,.0f} | {row['usec']:,.0f} | {per:.1f} |"
            )
    return "\n".join(rows)
