"""What the stack holds while a load runs: memory, open files, tasks and connections, sampled.

The overload and soak steps of bench/report.py ask "does anything grow?": a Resources sampler
records, every `interval` seconds,

  per replica   resident memory and open file descriptors of its processes (Granian's main
                process and its worker, /proc), and from its /metrics the event loop's tasks,
                the Redis and Postgres pool connections and the negative cache's entries
  nginx         resident memory and open file descriptors (master + worker), and the client
                connections stub_status reports as active
  Redis         connected clients and used memory (INFO)
  Postgres      backends connected to the database (pg_stat_activity)

Each sample is a flat {name: value} dict with a `t` (seconds since the start), so a series is
one key across the samples.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import psycopg
import redis

from core.settings import Settings
from seeder.generate import FIRST_STUDENT_ID

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes together (0 for one that is gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def open_fds(pids: list[int]) -> int:
    """Open file descriptors (sockets included) of these processes together."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def scrape(port: int) -> dict[str, float]:
    """A replica's /metrics as {'name{labels}': value}; empty when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("surge_") and " " in line:
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def wait_copies(ports: list[int], timeout: float = 180.0) -> float:
    """Seconds until every replica on `ports` holds the whole live version of every dataset in
    its own copy (surge_local_copy_complete), so that a measurement does not start mid-warm-up;
    at once when the copies are off (budget 0)."""
    started = time.monotonic()
    while True:
        pending = []
        for port in ports:
            gauges = scrape(port)
            if gauges.get('surge_local_copy_bytes{kind="budget"}', 0.0) <= 0:
                continue
            flags = [v for k, v in gauges.items() if k.startswith("surge_local_copy_complete{")]
            if not flags or min(flags) < 1:
                pending.append(port)
        if not pending:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"replicas on {pending}: copies not whole after {timeout:.0f} s")
        time.sleep(0.5)


LEAK_GAUGES = {
    "surge_event_loop_tasks": "tasks",
    "surge_redis_pool_connections": "redis_pool",
    "surge_postgres_pool_connections": "postgres_pool",
    "surge_negative_cache_entries": "negative_cache",
}
"""The gauges of a replica's /metrics worth following for leaks, by their short names."""


def replica_gauges(port: int) -> dict[str, float]:
    """LEAK_GAUGES of one replica, each summed over its labels (e.g. in_use + idle)."""
    out: dict[str, float] = {}
    for key, value in scrape(port).items():
        short = LEAK_GAUGES.get(key.split("{", 1)[0])
        if short:
            out[short] = out.get(short, 0.0) + value
    return out


def nginx_active(status_url: str) -> float | None:
    try:
        with urllib.request.urlopen(status_url, timeout=2) as r:
            match = re.search(r"Active connections:\s*(\d+)", r.read().decode())
    except OSError:
        return None
    return float(match[1]) if match else None


class Periodic:
    """A thread that calls tick() at once and then every `interval` seconds, from the start of
    a `with` block to its end (the samplers and probes of the benchmarks)."""

    interval = 1.0

    def tick(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Resources(Periodic):
    """A background sampler; `with Resources(...) as res:` around a load, then res.samples."""

    def __init__(
        self,
        groups: Callable[[], tuple[Mapping[str, list[int]], Mapping[str, int]]],
        settings: Settings,
        nginx_status_url: str,
        interval: float = 1.0,
    ) -> None:
        """groups: () -> (pids per process name, metrics port per replica name), looked up at
        every sample, so a replica Granian restarted is still followed."""
        self.groups = groups
        self.settings = settings
        self.status_url = nginx_status_url
        self.interval = interval
        self.samples: list[dict[str, float]] = []

    def sample(self) -> dict[str, float]:
        pids, ports = self.groups()
        point: dict[str, float] = {}
        for name, members in pids.items():
            point[f"{name} rss_mb"] = rss_bytes(members) / 2**20
            point[f"{name} fds"] = open_fds(members)
        for name, port in ports.items():
            for key, value in replica_gauges(port).items():
                point[f"{name} {key}"] = value
        active = nginx_active(self.status_url)
        if active is not None:
            point["nginx active"] = active
        with contextlib.suppress(redis.RedisError):
            info = self._redis.info()
            point["redis clients"] = info["connected_clients"]
            point["redis used_mb"] = info["used_memory"] / 2**20
        with contextlib.suppress(psycopg.Error):
            row = self._pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()
            point["postgres backends"] = float(row[0]) - 1 if row else 0.0  # not this one
        return point

    def tick(self) -> None:
        point = self.sample()
        point["t"] = round(self.elapsed(), 1)
        self.samples.append(point)

    def __enter__(self) -> Self:
        self._redis = redis.Redis.from_url(self.settings.stores.redis_url, socket_timeout=2)
        self._pg = psycopg.connect(
            self.settings.stores.database_url, autocommit=True, connect_timeout=5
        )
        self._start = time.monotonic()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._redis.close()
        self._pg.close()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def window(self, since: float, until: float) -> dict[str, list[float]]:
        """Every series over samples taken from `since` to `until` seconds in."""
        out: dict[str, list[float]] = {}
        for point in self.samples:
            if since <= point["t"] <= until:
                for key, value in point.items():
                    if key != "t":
                        out.setdefault(key, []).append(value)
        return out

    def maxima(self, since: float, until: float) -> dict[str, float]:
        return {key: max(values) for key, values in self.window(since, until).items()}

    def medians(self, since: float, until: float) -> dict[str, float]:
        return {key: statistics.median(values) for key, values in self.window(since, until).items()}

    def minima(self, since: float, until: float) -> dict[str, float]:
        return {key: min(values) for key, values in self.window(since, until).items()}


class Probe(Periodic):
    """A newcomer during a load: every `interval` s one GET of a random student on a new
    connection, timed on its own, so the latency of refusals and of admitted requests can be told
    apart (wrk reports one distribution for both). Its requests are few (20 a second) and are
    not part of the load's figures."""

    def __init__(self, url: str, last_id: int, interval: float = 0.05) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.last_id = last_id
        self.interval = interval
        self.answers: list[tuple[float, int, float]] = []  # (started, status or 0, seconds)
        self.rng = random.Random(7)

    def tick(self) -> None:
        started = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", f"/students/{self.rng.randint(FIRST_STUDENT_ID, self.last_id)}")
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except OSError:
            status = 0
        finally:
            conn.close()
        self.answers.append((started, status, time.monotonic() - started))

    def summary(self, since: float, until: float) -> dict[str, dict[str, float]]:
        """Per status ('200', '503', '0' = no answer): count, p50/p99/max latency in ms."""
        return self.pooled([(since, until)])

    def pooled(self, windows: Sequence[tuple[float, float]]) -> dict[str, dict[str, float]]:
        """summary() of the answers started in any of these (since, until) windows together."""
        by_status: dict[str, list[float]] = {}
        for started, status, seconds in self.answers:
            if any(since <= started <= until for since, until in windows):
                by_status.setdefault(str(status), []).append(seconds * 1000)
        out: dict[str, dict[str, float]] = {}
        for answer, values in sorted(by_status.items()):
            values.sort()
            out[answer] = {
                "count": len(values),
                "p50_ms": values[len(values) // 2],
                "p99_ms": values[min(len(values) - 1, int(0.99 * len(values)))],
                "max_ms": values[-1],
            }
        return out


class MeasuringBench(Protocol):
    """What a step module uses of bench/report.py's Bench: its settings, parameters, work dir,
    and a measured run (CPU per process group and the replicas' counters around a load)."""

    settings: Settings
    p: Mapping[str, Any]
    work: Path

    def measured(
        self,
        groups: dict[str, list[int]],
        ports: dict[str, int],
        load: Callable[[], dict[str, Any]],
        loadgen: str,
    ) -> dict[str, Any]: ...
