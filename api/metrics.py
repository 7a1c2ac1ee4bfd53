"""Prometheus metrics of one replica, cheap enough for the hot path.

Litestar's built-in Prometheus middleware costs much of the hot path's throughput and, without
group_path, makes one series per id (docs/architecture.md, "Measured facts"). This one labels
requests by route template, binds every label child once, keeps counts in plain numbers, and
builds the exposition (and reads the pool gauges) only when Prometheus scrapes. docs/metrics.md
lists every metric.
"""

from __future__ import annotations

import asyncio
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from itertools import accumulate
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from core.contract import DATASETS

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Sub-millisecond (a Redis hit) to seconds (a request stuck behind a timeout).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# Route templates by first path segment: never the raw path (one series per id would explode).
ROUTES = {
    **{dataset.name: f"/{dataset.name}/{{id}}" for dataset in DATASETS},
    "health": "/health",
    "ready": "/ready",
    "metrics": "/metrics",
    "docs": "/docs",
}
OTHER_ROUTE = "other"

OUTCOMES = (
    "local_hit",
    "not_in_live_version",
    "redis_hit",
    "fallback_hit",
    "not_found",
    "negative_cache_hit",
    "unavailable",
)


def route_of(path: str) -> str:
    segment = path.split("/", 2)[1] if path.count("/") else ""
    return ROUTES.get(segment, OTHER_ROUTE)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class _Uncounted:
    """Stands in for every metric child when metrics are off (SURGE_METRICS=off)."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class _Count:
    """A counter child: a plain number. A replica serves from one event-loop thread, and the
    scrape runs on that loop too, so prometheus_client's per-update lock buys nothing here, and
    its Counter and Histogram cost a visible share of this hot path's throughput."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Buckets:
    """A histogram child: per-bucket counts (le = upper bound) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, amount)] += 1
        self.sum += amount


class _Family:
    """Children of one metric by label values, exposed at scrape time."""

    def __init__(self, name: str, doc: str, labels: list[str], child: type) -> None:
        self.name, self.doc, self.label_names, self.child = name, doc, labels, child
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.child()
        return child

    def collect(self) -> Metric:
        if self.child is _Count:
            counter = CounterMetricFamily(self.name, self.doc, labels=self.label_names)
            for values, count in self.children.items():
                counter.add_metric(list(values), count.value)
            return counter
        family = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
        bounds = [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        for values, buckets in self.children.items():
            family.add_metric(
                list(values),
                buckets=list(zip(bounds, accumulate(buckets.counts), strict=True)),
                sum_value=buckets.sum,
            )
        return family


class _Families(Collector):
    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return [family.collect() for family in self.families]


class Metrics:
    """Every metric of one replica, in its own registry (tests build many apps per process)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Gauge(
            "surge_build_info",
            "Versions this replica runs; always 1.",
            ["version", "python", "litestar", "granian"],
            registry=registry,
        ).labels(
            _version("surge"), platform.python_version(), _version("litestar"), _version("granian")
        ).set(1)

        self.requests = _Family(
            "surge_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            _Count,
        )
        self.request_seconds = _Family(
            "surge_http_request_duration_seconds",
            "Time from request to the end of the response, by route template.",
            ["route"],
            _Buckets,
        )
        self.lookups = _Family(
            "surge_lookups",
            "Record lookups by dataset and outcome: local_hit (the replica's own copy), "
            "not_in_live_version (404 from a complete copy), redis_hit, fallback_hit (read "
            "from Postgres after a Redis miss or fault), not_found, negative_cache_hit, "
            "unavailable (503).",
            ["dataset", "outcome"],
            _Count,
        )
        self.store_seconds = _Family(
            "surge_store_call_duration_seconds",
            "Time of one call to a store: redis hget/hset, postgres (the primary) or "
            "postgres_standby select.",
            ["store", "operation"],
            _Buckets,
        )
        self.refused_writes = _Family(
            "surge_redis_refused_writes",
            "Write-backs Redis refused because it is full (maxmemory, noeviction): the request "
            "was answered all the same; the record stays a miss until Redis has room.",
            [],
            _Count,
        )
        self.store_errors = _Family(
            "surge_store_errors",
            "Failed store calls (timeouts, refused connections, pool exhausted), by store.",
            ["store"],
            _Count,
        )
        registry.register(
            _Families(
                [
                    self.requests,
                    self.request_seconds,
                    self.lookups,
                    self.store_seconds,
                    self.store_errors,
                    self.refused_writes,
                ]
            )
        )
        # Children bound once, so the hot path does no label lookups.
        self._latency_children = {
            route: self.request_seconds.labels(route) for route in (*ROUTES.values(), OTHER_ROUTE)
        }
        self.outcomes = {
            dataset.name: SimpleNamespace(
                **{outcome: self.lookups.labels(dataset.name, outcome) for outcome in OUTCOMES}
            )
            for dataset in DATASETS
        }
        self.redis_hget = self.store_seconds.labels("redis", "hget")
        self.redis_hset = self.store_seconds.labels("redis", "hset")
        self.postgres_select = self.store_seconds.labels("postgres", "select")
        self.redis_errors = self.store_errors.labels("redis")
        self.redis_refused_write = self.refused_writes.labels()
        self.postgres_errors = self.store_errors.labels("postgres")
        self.standby_select = self.store_seconds.labels("postgres_standby", "select")
        self.standby_errors = self.store_errors.labels("postgres_standby")
        if not enabled:
            off = _Uncounted()
            self.outcomes = {
                name: SimpleNamespace(**dict.fromkeys(OUTCOMES, off)) for name in self.outcomes
            }
            self.redis_hget = self.redis_hset = self.postgres_select = self.standby_select = off
            self.redis_errors = self.postgres_errors = self.redis_refused_write = off
            self.standby_errors = off

    def watch(self, stats: Callable[[], LookupStats]) -> None:
        """Pool, circuit and copy gauges, from the read path's own report at scrape time."""
        self.registry.register(_LookupCollector(stats))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self._latency_children[route].observe(seconds)

    def bound(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one kind of answer, for a path that
        counts its requests itself (api.fast_path)."""
        if not self.enabled:
            return _Uncounted(), _Uncounted()
        return self.requests.labels(route, method, str(status)), self._latency_children[route]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wraps the whole ASGI app, routing included, so 404s and 405s are counted too."""
        observe = self.observe_request
        clock = time.perf_counter

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = clock()
            status = 500

            async def send_and_note_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note_status)
            finally:
                observe(route_of(scope["path"]), scope["method"], status, clock() - started)

        return measured


@dataclass(frozen=True, slots=True)
class CopyStats:
    dataset: str
    version: int
    records: int
    complete: bool


@dataclass(frozen=True, slots=True)
class LookupStats:
    """What the read path reports of itself at scrape time (api.lookup.Lookup.stats): the
    metrics module renders it and reads nothing else of the lookup or its clients."""

    redis_in_use: int | None
    """None when the client cannot tell (a cluster client): the gauge is then left out."""
    redis_idle: int | None
    redis_max: int
    postgres_in_use: int
    postgres_idle: int
    postgres_max: int
    postgres_waiting: int
    standby_reads: bool | None
    """Whether misses read the standby now; None without one."""
    circuit_open: bool
    negative_entries: int
    copies: tuple[CopyStats, ...]
    copy_bytes_used: int
    copy_bytes_budget: int


class _LookupCollector(Collector):
    def __init__(self, stats: Callable[[], LookupStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        st = self.stats()
        yield _gauge(
            "surge_redis_pool_connections",
            "Redis connections of this replica by state (in_use, idle).",
            [(("in_use",), st.redis_in_use), (("idle",), st.redis_idle)]
            if st.redis_in_use is not None and st.redis_idle is not None
            else [],
            ["state"],
        )
        yield _gauge(
            "surge_redis_pool_max", "Redis connections this replica may open.",
            [((), st.redis_max)],
        )  # fmt: skip
        yield _gauge(
            "surge_postgres_pool_connections",
            "Postgres connections of this replica by state (in_use, idle).",
            [(("in_use",), st.postgres_in_use), (("idle",), st.postgres_idle)],
            ["state"],
        )
        yield _gauge(
            "surge_postgres_pool_max", "Postgres connections this replica may open.",
            [((), st.postgres_max)],
        )  # fmt: skip
        yield _gauge(
            "surge_postgres_pool_waiting",
            "Requests waiting for a Postgres connection now (capped by SURGE_PG_MAX_WAITING).",
            [((), st.postgres_waiting)],
        )
        if st.standby_reads is not None:
            yield _gauge(
                "surge_postgres_standby_reads",
                "1 while this replica's misses read the standby (SURGE_DATABASE_READ_URL), 0 "
                "while they read the primary (the standby failed or has not caught up).",
                [((), int(st.standby_reads))],
            )
        yield _gauge(
            "surge_redis_circuit_open",
            "1 while this replica has stopped asking Redis after repeated failures, else 0.",
            [((), int(st.circuit_open))],
        )
        yield _gauge(
            "surge_negative_cache_entries",
            "Unknown ids this replica currently remembers as unknown.",
            [((), st.negative_entries)],
        )
        yield _gauge(
            "surge_local_copy_records",
            "Records of the live version this replica holds in its own copy, per dataset.",
            [((c.dataset, str(c.version)), c.records) for c in st.copies],
            ["dataset", "version"],
        )
        yield _gauge(
            "surge_local_copy_complete",
            "1 when the copy holds the dataset's whole live version (unknown ids are then "
            "answered 404 from it, without Redis or Postgres), else 0.",
            [((c.dataset,), int(c.complete)) for c in st.copies],
            ["dataset"],
        )
        yield _gauge(
            "surge_local_copy_bytes",
            "Bytes of the copy (all datasets), and its budget (SURGE_LOCAL_CACHE_MB).",
            [(("used",), st.copy_bytes_used), (("budget",), st.copy_bytes_budget)],
            ["kind"],
        )
        yield _gauge(
            "surge_event_loop_tasks",
            "Tasks alive in this replica's event loop: requests in progress plus background work.",
            [((), _loop_tasks())],
        )


def _loop_tasks() -> int:
    """Requests in flight and background tasks; a count that keeps rising under a steady load is
    a leak (the soak in `make bench` watches it). 0 outside a running loop."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


Samples = list[tuple[tuple[str, ...], float]]


def _gauge(
    name: str, doc: str, samples: Samples, labels: list[str] | None = None
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels or [])
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family
