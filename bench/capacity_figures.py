"""`make bench`'s capacity_figures step: the inputs of `make capacity` no other step isolates.

bench/capacity.py can derive every figure from the other steps, but some only roughly: bytes per
record of both datasets together, the replica's whole memory as its copy's, the Redis path from
the bare handler, the Postgres path from a cold pass that also warms copies. This step measures
them one by one, against the stores `make up` runs, with three replicas of its own (one Granian
worker each, straight to it, no nginx, on free ports):

  copy          the default replica, its copy warmed (both datasets; its bound raised so
                nothing is evicted)
  Redis         SURGE_LOCAL_CACHE_MB=0: every lookup an HGET
  Postgres      the copy off and SURGE_REDIS_URL at an empty database of the same Redis: every
                lookup a miss, a Postgres read and a write-back, as after Redis was emptied (the
                keys it writes there are removed before each run and at the end)

Each path: wrk with bench/statuses.lua, random students, CONNECTIONS connections each pausing
so that about RATE lookups a second arrive: each on its own, as in the reference ramp (whose
rate RATE is), not batched as under wrk's busy connections (the per-request CPU differs about
4x between the two regimes, docs/performance.md). CPU per process from /proc as in every step.
Then the Postgres replica again without pauses: its pool (SURGE_PG_POOL_MAX) is the bottleneck,
and fallbacks a second over its connections is what one connection delivers.

Memory: MEMORY USAGE over HLEN of sampled hashes of each dataset's live version (as the seeder
measures it); the lengths of those records' bodies; the copy replica's resident memory against
the Redis replica's (the same process without a copy) after their runs, the difference split
over the datasets by their body sizes plus one per-entry overhead.

The results carry `figures`, named as bench/capacity.Figures' fields, each with its value, unit
and how it was computed: bench/capacity.py takes them over its derived ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from bench.resources import MeasuringBench as BenchLike
from bench.resources import rss_bytes, scrape
from bench.wrk import wrk
from core.contract import DATASETS, LIVE_KEY, MARKER_KEY, parse_version
from seeder.generate import FIRST_STUDENT_ID
from stack.servers import child_pids, free_port, granian_command, stop_children, wait_for

ROOT = Path(__file__).resolve().parent.parent
RATE = 1_600
"""Lookups a second offered to each path: the reference ramp's (1,624 req/s in the report of
2026-12-01), the regime bench/capacity.py plans in."""
CONNECTIONS = 64
SAMPLE_HASHES = 200
WARM_TIMEOUT_S = 120.0
COPY_BOUND_MB = 65_536
"""The copy replica's SURGE_LOCAL_CACHE_MB: above any dataset here, so it holds all of it."""

REPLICAS: dict[str, dict[str, str]] = {
    "copy": {"SURGE_LOCAL_CACHE_MB": str(COPY_BOUND_MB)},
    "Redis": {"SURGE_LOCAL_CACHE_MB": "0"},
    "Postgres": {"SURGE_LOCAL_CACHE_MB": "0"},  # and SURGE_REDIS_URL at an empty database
}


def _figure(value: float, unit: str, source: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "source": source}


def per_core(run: Mapping[str, Any], kind: str, count: float, what: str) -> dict[str, Any]:
    """`count` answers over the CPU seconds of the processes named `kind` (api-1, redis, ...)."""
    cores = sum(v for k, v in run["cpu"].items() if k.split("-")[0] == kind)
    seconds = cores * run["wall_s"]
    if seconds <= 0 or count <= 0:
        raise RuntimeError(f"capacity figures: {what}: no CPU or no answers recorded")
    return _figure(
        count / seconds,
        "/s per core",
        f"{what}: {count:,.0f} in {run['wall_s']:.1f} s at {cores:.3f} {kind} cores",
    )


def lookups(run: Mapping[str, Any], outcome: str) -> float:
    return float(run.get("store", {}).get("lookups", {}).get(outcome, 0.0))


def figures(
    runs: Mapping[str, Mapping[str, Any]],
    records: Mapping[str, int],
    redis_bytes: Mapping[str, float],
    body_bytes: Mapping[str, float],
    rss_copy: float,
    rss_without: float,
    pool_max: int,
) -> dict[str, dict[str, Any]]:
    """The measured figures, from the runs and the memory readings (pure arithmetic)."""
    copy, via_redis = runs["copy"], runs["Redis"]
    via_pg, pool = runs["Postgres"], runs["Postgres pool"]
    out = {
        "hit_per_core": per_core(copy, "api", lookups(copy, "local_hit"), "copy, paced"),
        "redis_path_per_core": per_core(
            via_redis, "api", lookups(via_redis, "redis_hit"), "Redis path, paced"
        ),
        "fallback_per_core": per_core(
            via_pg, "api", lookups(via_pg, "fallback_hit"), "Postgres path, paced"
        ),
        "redis_ops_per_core": per_core(
            via_redis, "redis", lookups(via_redis, "redis_hit"), "Redis path: HGETs"
        ),
        "postgres_per_core": per_core(
            via_pg, "postgres", lookups(via_pg, "fallback_hit"), "Postgres path: fallbacks"
        ),
    }
    fallbacks = lookups(pool, "fallback_hit")
    waiting = float(pool.get("store", {}).get("pool_waiting_max", 0.0))
    out["fallbacks_per_connection"] = _figure(
        fallbacks / float(pool["seconds"]) / pool_max,
        "/s per connection",
        f"Postgres path, unpaced: {fallbacks:,.0f} fallbacks in {pool['seconds']:.1f} s over "
        f"{pool_max} pool connections, up to {waiting:.0f} requests waiting for one"
        + ("" if waiting > 0 else " (none waited: the pool was not the bottleneck, a floor)"),
    )
    out["pool_max"] = _figure(float(pool_max), "connections", "SURGE_PG_POOL_MAX")
    total = sum(records.values())
    body_total = sum(records[d] * body_bytes[d] for d in records)
    copy_bytes = max(0.0, rss_copy - rss_without)
    overhead = (copy_bytes - body_total) / total if total else 0.0
    for name in ("students", "bookings"):
        sampled = f"MEMORY USAGE / HLEN of {SAMPLE_HASHES} sampled hashes of the live version"
        out[f"redis_bytes_{name}"] = _figure(redis_bytes[name], "B/record", sampled)
        out[f"copy_bytes_{name}"] = _figure(
            body_bytes[name] + overhead,
            "B/record",
            f"body {body_bytes[name]:,.0f} B (sampled) + {overhead:,.0f} B per entry: the copy "
            f"replica's resident memory {rss_copy / 2**20:,.0f} MiB - the Redis replica's "
            f"{rss_without / 2**20:,.0f} MiB, less the bodies, over {total:,} records",
        )
    out["replica_base_bytes"] = _figure(
        rss_without, "B", "the Redis replica's resident memory after its run (no copy)"
    )
    return out


# -- measuring ---------------------------------------------------------------------------------


def dataset_memory(
    client: redis.Redis,
) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    """Records (the seeder's marker), Redis bytes and body bytes per record, per dataset."""
    records: dict[str, int] = {}
    per_record: dict[str, float] = {}
    body: dict[str, float] = {}
    for dataset in DATASETS:
        marker = client.hget(MARKER_KEY, dataset.name)
        records[dataset.name] = int(json.loads(marker)["records"]) if marker else 0
        version = parse_version(client.hget(LIVE_KEY, dataset.name))
        keys = list(client.scan_iter(match=dataset.version_pattern(version), count=1000))
        sample = keys[:: max(1, len(keys) // SAMPLE_HASHES)]
        pipe = client.pipeline(transaction=False)
        for key in sample:
            pipe.memory_usage(key, samples=0)  # every element: exact
            pipe.hvals(key)
        replies = pipe.execute()
        values = [v for chunk in replies[1::2] for v in chunk]
        per_record[dataset.name] = sum(replies[0::2]) / len(values) if values else 0.0
        body[dataset.name] = sum(map(len, values)) / len(values) if values else 0.0
    return records, per_record, body


@contextlib.contextmanager
def empty_database(url: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """The URL of an empty database of the Redis at `url` (the highest-numbered one), and a
    function that removes the records written there (run before each use and at the end)."""
    for db in range(15, 0, -1):
        candidate = urlsplit(url)._replace(path=f"/{db}").geturl()
        client = redis.Redis.from_url(candidate)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        raise RuntimeError(f"capacity figures: no empty database in the Redis at {url}")

    def clear() -> int:
        keys = [
            k for d in DATASETS for k in client.scan_iter(match=d.version_pattern(), count=1000)
        ]
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])
        return len(keys)

    try:
        yield candidate, clear
    finally:
        clear()
        client.close()


def _answers(port: int) -> bool:
    return bool(scrape(port))


def _warmed(log: Path, datasets: list[str]) -> bool:
    """The replica has logged a finished copy of each dataset (api/lookup.py's warm-up)."""
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace")
        return all(f"local copy of {name} v" in text for name in datasets)
    return False


def step(bench: BenchLike) -> dict[str, Any]:
    settings, work = bench.settings, bench.work
    seconds = int(bench.p["seconds"])
    last_id = FIRST_STUDENT_ID + settings.dataset.students - 1
    pace = CONNECTIONS * 1000 / RATE
    client = redis.Redis.from_url(settings.stores.redis_url)
    try:
        records, redis_bytes, body_bytes = dataset_memory(client)
    finally:
        client.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    log = work / "capacity-copy.log"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        empty_url, clear = stack.enter_context(empty_database(settings.stores.redis_url))
        stack.callback(stop_children, procs.values())
        for name, extra in REPLICAS.items():
            ports[name] = free_port()
            app_env = {**env, **extra}
            if name == "Postgres":
                app_env["SURGE_REDIS_URL"] = empty_url
            cmd = granian_command(
                "api.app:create_app", ports[name], settings.stores.redis_pool_size
            )
            # The copy replica's log says when its warm-up is done; the others' is not read.
            with open(log if name == "copy" else os.devnull, "ab") as err:
                procs[name] = subprocess.Popen(
                    cmd, cwd=ROOT, env=app_env, stdout=subprocess.DEVNULL, stderr=err
                )
        for name, port in ports.items():
            wait_for(partial(_answers, port), timeout=30, what=f"{name} replica")
        held = [name for name, count in records.items() if count]
        wait_for(lambda: _warmed(log, held), timeout=WARM_TIMEOUT_S, what="the copy's warm-up")

        def paced(name: str, duration: int) -> dict[str, Any]:
            url = f"http://127.0.0.1:{ports[name]}"
            return wrk(url, duration, CONNECTIONS, "statuses.lua", FIRST_STUDENT_ID, last_id,
                       f"pace={pace:.2f}")  # fmt: skip

        def group(name: str) -> dict[str, list[int]]:
            pid = procs[name].pid
            return {"api-1": [pid, *sorted(child_pids(pid))]}

        for name in REPLICAS:
            paced(name, 1)  # warm-up: connections, pools
            clear()  # the Postgres replica's write-backs: every lookup a miss again
            runs[name] = bench.measured(
                group(name), {"api-1": ports[name]}, partial(paced, name, seconds), "wrk"
            )
        url = f"http://127.0.0.1:{ports['Postgres']}"
        clear()
        runs["Postgres pool"] = bench.measured(
            group("Postgres"),
            {"api-1": ports["Postgres"]},
            lambda: wrk(url, seconds, CONNECTIONS, "statuses.lua", FIRST_STUDENT_ID, last_id),
            "wrk",
        )
        time.sleep(0.5)
        rss_copy = float(rss_bytes(group("copy")["api-1"]))
        rss_without = float(rss_bytes(group("Redis")["api-1"]))
    measured = figures(
        runs, records, redis_bytes, body_bytes, rss_copy, rss_without, settings.api.pg_pool_max
    )
    rows = ["| figure | value | how |", "|---|---|---|"]
    rows += [
        f"| {name} | {f['value']:,.1f} {f['unit']} | {f['source']} |"
        for name, f in measured.items()
    ]
    return {
        "how": f"Three replicas of this step's own, one Granian worker each, wrk straight to "
        f"each (no nginx): `copy` (its copy warmed), `Redis` (SURGE_LOCAL_CACHE_MB=0), "
        f"`Postgres` (the copy off, an empty Redis database: every lookup a miss, a Postgres "
        "read and a write-back). Each: "
        f"bench/statuses.lua, random students, -c{CONNECTIONS}, each connection pausing "
        f"{pace:.0f} ms on average (about {RATE:,} lookups/s, the reference ramp's rate, each "
        f"arriving alone), {seconds} s. `Postgres pool`: the Postgres replica without pauses, "
        f"its {settings.api.pg_pool_max} pool connections the bottleneck. Records: "
        + ", ".join(f"{n} {c:,}" for n, c in records.items())
        + ".",
        "runs": runs,
        "figures": measured,
        "notes": [
            "The inputs of `make capacity` (bench/capacity.py, docs/capacity.md):\n\n"
            + "\n".join(rows)
        ],
    }
