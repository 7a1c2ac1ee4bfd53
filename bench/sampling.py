"""CPU per process and the replicas' store counters around one load run (bench/report.py's
Measure), sampled every second so that a stall of a second shows."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

from bench.replicas import busy_cores_seconds, cpu_seconds, steal_cores_seconds
from bench.resources import Periodic, scrape
from bench.stall_probe import StallProbe
from core.settings import Settings
from stack.servers import (
    child_pids,
)

ROOT = Path(__file__).resolve().parent.parent


def with_children(pid: int) -> list[int]:
    return [pid, *sorted(child_pids(pid))]


def store_pids(settings: Settings) -> dict[str, list[int]]:
    """Redis (its INFO pid) and Postgres (postmaster and its children), when local."""
    out: dict[str, list[int]] = {}
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(settings.stores.redis_url)
        out["redis"] = [int(client.info("server")["process_id"])]
        client.close()
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(settings.stores.database_url) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchall()[0][0]
        postmaster = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
        out["postgres"] = with_children(postmaster)
    return out


def load_generators() -> list[int]:
    """This process's k6 or wrk children."""
    found = []
    for pid in child_pids(os.getpid()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("k6", "wrk"):
                found.append(pid)
    return found


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(x for x in status if x.startswith("VmRSS:")).split()[1]) / 1024
    return 0.0


class Measure(Periodic):
    """CPU per process group, the rest of the machine (`other`), the hypervisor's steal and the
    replicas' store metrics over one load run."""

    interval = 1.0

    def __init__(
        self,
        groups: Mapping[str, list[int]],
        metric_ports: Mapping[str, int],
        rediscover: Callable[[], Mapping[str, list[int]]] | None = None,
    ) -> None:
        """groups: pids per process name, fixed; rediscover: more groups, looked up again at
        the end (Postgres forks a backend per new pool connection during a run)."""
        self.rediscover = rediscover or dict
        self.groups = {**groups, **self.rediscover()}
        self.ports = metric_ports
        self.waiting_max = 0.0

    def __enter__(self) -> Measure:
        self.before = {
            name: {pid: cpu_seconds([pid]) for pid in pids} for name, pids in self.groups.items()
        }
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.busy = busy_cores_seconds()
        self.steal = steal_cores_seconds()
        self.metrics_before = {n: scrape(p) for n, p in self.ports.items()}
        self.started = self.last_tick = time.monotonic()
        self.last_used: dict[str, float] = {}
        self.loadgen_rss_mb = 0.0
        self.series: list[dict[str, float]] = []
        self.ticks = 0
        self.stalls = StallProbe().__enter__()
        return super().__enter__()

    def tick(self) -> None:
        self.ticks += 1
        # A replica's /metrics costs it ~2 ms of CPU: every 5 s is enough for the pool's
        # waits, and keeps the sampler's own cost out of the CPU per request it measures.
        for port in self.ports.values() if self.ticks % 5 == 1 else ():
            waiting = scrape(port).get("surge_postgres_pool_waiting", 0.0)
            self.waiting_max = max(self.waiting_max, waiting)
        # CPU per process every tick: a stall of a second shows, which run totals average away.
        now = time.monotonic()
        used = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        generators = load_generators()
        used["loadgen"] = cpu_seconds(generators)
        used["steal"] = steal_cores_seconds()
        self.loadgen_rss_mb = max(self.loadgen_rss_mb, sum(map(rss_mb, generators)))
        if self.last_used:
            span = max(now - self.last_tick, 1e-6)
            point = {"t": round(now - self.started, 1)}
            point |= {
                n: round(max(0.0, used[n] - self.last_used.get(n, used[n])) / span, 3) for n in used
            }
            self.series.append(point)
        self.last_used, self.last_tick = used, now

    def __exit__(self, *exc: object) -> None:
        self.wall = max(time.monotonic() - self.started, 1e-6)
        super().__exit__(*exc)
        groups = {**self.groups, **self.rediscover()}
        self.cpu = {}
        for name, pids in groups.items():
            started = self.before.get(name, {})
            # a process born during the run counts from 0; one that ended is lost (short-lived)
            used = sum(cpu_seconds([pid]) - started.get(pid, 0.0) for pid in pids)
            self.cpu[name] = max(0.0, used) / self.wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime - self.children.ru_utime + after.ru_stime - self.children.ru_stime
        self.cpu["loadgen"] = used / self.wall
        self.cpu["other"] = max(
            0.0, (busy_cores_seconds() - self.busy) / self.wall - sum(self.cpu.values())
        )
        self.cpu["steal"] = (steal_cores_seconds() - self.steal) / self.wall
        self.stalls.__exit__(None, None, None)  # after the children's CPU: not the load's
        self.store: dict[str, Any] = {
            "pool_waiting_max": self.waiting_max, "store_errors": 0.0, "lookups": {}
        }  # fmt: skip
        for name, port in self.ports.items():
            now, before = scrape(port), self.metrics_before.get(name, {})
            self.store["pool_waiting_max"] = max(
                self.store["pool_waiting_max"], now.get("surge_postgres_pool_waiting", 0.0)
            )
            for key, value in now.items():
                delta = value - before.get(key, 0.0)
                if key.startswith("surge_store_errors_total"):
                    self.store["store_errors"] += delta
                match = re.match(r'surge_lookups_total\{.*outcome="(\w+)"', key)
                if match and delta:
                    lookups = self.store["lookups"]
                    lookups[match[1]] = lookups.get(match[1], 0.0) + delta

    def attach(self, run: dict[str, Any], loadgen: str) -> dict[str, Any]:
        cpu = dict(self.cpu)
        cpu[loadgen] = cpu.pop("loadgen")
        run["cpu"] = {k: round(v, 3) for k, v in cpu.items()}
        run["wall_s"] = round(self.wall, 2)
        run["loadgen_rss_mb_max"] = round(self.loadgen_rss_mb)
        run["cpu_series"] = [
            {(loadgen if k == "loadgen" else k): v for k, v in point.items()}
            for point in self.series
        ]
        run["store"] = self.store
        self.stalls.attach(run)
        return run


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median req/s (its latencies and CPU belong to it), plus every round."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    out = dict(ordered[len(ordered) // 2])
    out["errors"] = sum(r["errors"] for r in runs)
    if len(runs) > 1:
        out["rounds_rps"] = [round(r["rps"]) for r in runs]
    return out
