"""`make capacity`: what a peak of lookups needs of each tier, from what `make bench` measured.

    python -m bench.capacity --students 896520 --peak-rps 7500 [--bookings N] [--headroom 50%]
        [--fallback-share 1%] [--cores-per-node 8] [--redis-node-gb 3] [--results PATH]

Pure arithmetic on figures measured per core, per record and per connection, read from the newest
full docs/benchmarks/<date>/results.json (or --results): those of its capacity_figures step
(bench/capacity_figures.py) where it ran, else derived from the other steps. docs/capacity.md
explains each figure, where it comes from, and works three examples.

Inputs
  N_d   records of dataset d (STUDENTS, BOOKINGS)        R  peak lookups a second (PEAK_RPS)
  H     headroom (HEADROOM, default 50%)                 f  share of the lookups Postgres answers
  K     cores per node (CORES_PER_NODE, default 8)          (FALLBACK_SHARE, default 1%)
  G     memory one Redis node may hold (REDIS_NODE_GB, GiB; default 3, SURGE_REDIS_MAXMEMORY's)

Measured (a rate per core is what one fully busy core sustains: 1 / CPU seconds per request)
  h     lookups/s per replica core, answered from the replica's own copy
  r     lookups/s per replica core, answered from Redis (the copy cold)
  p     lookups/s per replica core, answered from Postgres
  x     requests/s per nginx core               o  HGETs/s per Redis core (a Redis node: one core)
  q     fallbacks/s per Postgres core           c  fallbacks/s per Postgres connection
  P     SURGE_PG_POOL_MAX the measurements ran with
  b_d   Redis bytes per record                  m_d  replica-copy bytes per record
  B     a replica's resident memory without its copy

Formulas. Every load is multiplied by (1 + H) before it meets a capacity: R' = R (1 + H).
  replica cores     C = R' ((1 - f) / h + f / p)
  replicas          n = max(2, ceil(C))                  one Granian worker (one core) each
  replica nodes     ceil(n / K)
  copies cold       C_cold = R' ((1 - f) / r + f / p)    every copy empty (right after a reseed)
  nginx             X = R' / x cores; ceil(X) workers on ceil(ceil(X) / K) node(s)
  copy              M = sum_d N_d m_d;  SURGE_LOCAL_CACHE_MB = ceil(M (1 + H) / MiB)
  replica memory    (B + M) (1 + H)
  Redis memory      D = 2 sum_d N_d b_d (1 + H)          two versions during a reseed
  Redis ops/s       O = R' (1 + f)                       each lookup's HGET (the copies cold) and
                                                         a write-back per fallback
  Redis masters     s = max(ceil(D / G), ceil(O / o)); s = 1: one node; s > 1: a Redis Cluster
                    of max(3, s) masters with one replica each
  Postgres          F = R' f fallbacks/s; connections the rate needs k = ceil(F / c); pool per
                    replica P' = max(P, ceil(k / n)); connections opened n P'; cores F / q;
                    flagged when n P' and a few others pass Postgres's default max_connections
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs/benchmarks"
MIB = 2**20
GIB = 2**30

MIN_REPLICAS = 2
"""Any replica may die at any moment (nginx retries the GET on another): never fewer than two."""
REDIS_VERSIONS = 2
"""A reseed fills the new version beside the live one and removes the old after a grace period."""
CLUSTER_MIN_MASTERS = 3
"""Redis Cluster's own minimum: failover needs a majority of masters."""
REDIS_REPLICAS_PER_MASTER = 1
PG_MAX_CONNECTIONS = 100
"""Postgres's default max_connections, of which superuser_reserved_connections (3) are reserved."""
PG_RESERVED = 3
PG_OTHER_CONNECTIONS = 5
"""Beside the replicas' pools: the seeder, the redis-keeper, the exporter, an admin's psql."""
DEFAULT_BOOKINGS_IN_BENCH = 500_000
"""SURGE_BOOKINGS's default, which `make bench` ran with when its report did not record it."""

STEP = "capacity_figures"
"""bench/capacity_figures.py's step of `make bench`: the figures no other step isolates."""


class PlanError(ValueError):
    """An input or a results file the plan cannot be computed from; the message says why."""


@dataclass(frozen=True, slots=True)
class Figure:
    value: float
    unit: str
    source: str
    """Where the value comes from, in words: the step, the run and the arithmetic."""


@dataclass(frozen=True, slots=True)
class Figures:
    """The measured inputs of a plan (the docstring's h, r, p, x, o, q, c, P, b_d, m_d, B)."""

    date: str
    machine: str
    path: str
    hit_per_core: Figure
    redis_path_per_core: Figure
    fallback_per_core: Figure
    nginx_per_core: Figure
    redis_ops_per_core: Figure
    postgres_per_core: Figure
    fallbacks_per_connection: Figure
    pool_max: Figure
    redis_bytes_students: Figure
    redis_bytes_bookings: Figure
    copy_bytes_students: Figure
    copy_bytes_bookings: Figure
    replica_base_bytes: Figure

    def measured(self) -> list[tuple[str, Figure]]:
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return [(name, value) for name, value in values if isinstance(value, Figure)]


@dataclass(frozen=True, slots=True)
class Demand:
    students: int
    peak_rps: float
    bookings: int = 0
    headroom: float = 0.5
    fallback_share: float = 0.01
    cores_per_node: int = 8
    redis_node_gb: float = 3.0

    def check(self) -> None:
        problems = []
        if self.students < 0 or self.bookings < 0:
            problems.append("STUDENTS and BOOKINGS must not be negative")
        elif self.students + self.bookings == 0:
            problems.append("no records: give STUDENTS and/or BOOKINGS")
        if not self.peak_rps > 0:
            problems.append(f"PEAK_RPS must be above 0, not {self.peak_rps:g}")
        if not 0 <= self.headroom <= 10:
            problems.append(f"HEADROOM must be between 0% and 1000%, not {self.headroom:.0%}")
        if not 0 <= self.fallback_share <= 1:
            problems.append(
                f"FALLBACK_SHARE must be between 0% and 100%, not {self.fallback_share:.0%}"
            )
        if self.cores_per_node < 1:
            problems.append(f"CORES_PER_NODE must be at least 1, not {self.cores_per_node}")
        if not self.redis_node_gb > 0:
            problems.append(f"REDIS_NODE_GB must be above 0, not {self.redis_node_gb:g}")
        if problems:
            raise PlanError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Plan:
    demand: Demand
    figures: Figures
    load_rps: float
    replica_cores: float
    replicas: int
    replica_nodes: int
    cold_copy_cores: float
    nginx_cores: float
    nginx_workers: int
    nginx_nodes: int
    copy_bytes: float
    local_cache_mb: int
    replica_memory_bytes: float
    redis_bytes: float
    redis_ops: float
    redis_masters_for_memory: int
    redis_masters_for_ops: int
    redis_masters: int
    redis_nodes: int
    cluster: bool
    fallback_rps: float
    pg_connections_needed: int
    pg_pool_max: int
    pg_connections: int
    postgres_cores: float

    def render(self) -> str:
        return render(self)


def _ceil(x: float) -> int:
    """ceil() that does not round a quotient's last-bit error up to one more unit."""
    return math.ceil(x - 1e-9)


def plan(demand: Demand, figures: Figures) -> Plan:
    """The docstring's formulas, in its order."""
    demand.check()
    for name, figure in figures.measured():
        if name != "replica_base_bytes" and not figure.value > 0:
            raise PlanError(f"figure {name} is {figure.value:g}: {figure.source}")
    d, fig = demand, figures
    grow = 1 + d.headroom
    load = d.peak_rps * grow
    f = d.fallback_share
    replica_cores = load * ((1 - f) / fig.hit_per_core.value + f / fig.fallback_per_core.value)
    replicas = max(MIN_REPLICAS, _ceil(replica_cores))
    cold = load * ((1 - f) / fig.redis_path_per_core.value + f / fig.fallback_per_core.value)
    nginx_cores = load / fig.nginx_per_core.value
    nginx_workers = max(1, _ceil(nginx_cores))
    copy = d.students * fig.copy_bytes_students.value + d.bookings * fig.copy_bytes_bookings.value
    redis_data = (
        d.students * fig.redis_bytes_students.value + d.bookings * fig.redis_bytes_bookings.value
    )
    redis_bytes = REDIS_VERSIONS * redis_data * grow
    redis_ops = load * (1 + f)
    for_memory = _ceil(redis_bytes / (d.redis_node_gb * GIB))
    for_ops = _ceil(redis_ops / fig.redis_ops_per_core.value)
    needed = max(1, for_memory, for_ops)
    cluster = needed > 1
    masters = max(CLUSTER_MIN_MASTERS, needed) if cluster else 1
    fallback_rps = load * f
    pg_needed = _ceil(fallback_rps / fig.fallbacks_per_connection.value)
    pool = max(int(fig.pool_max.value), _ceil(pg_needed / replicas))
    return Plan(
        demand=d,
        figures=fig,
        load_rps=load,
        replica_cores=replica_cores,
        replicas=replicas,
        replica_nodes=_ceil(replicas / d.cores_per_node),
        cold_copy_cores=cold,
        nginx_cores=nginx_cores,
        nginx_workers=nginx_workers,
        nginx_nodes=_ceil(nginx_workers / d.cores_per_node),
        copy_bytes=copy,
        local_cache_mb=_ceil(copy * grow / MIB),
        replica_memory_bytes=(fig.replica_base_bytes.value + copy) * grow,
        redis_bytes=redis_bytes,
        redis_ops=redis_ops,
        redis_masters_for_memory=for_memory,
        redis_masters_for_ops=for_ops,
        redis_masters=masters,
        redis_nodes=masters * (1 + REDIS_REPLICAS_PER_MASTER) if cluster else 1,
        cluster=cluster,
        fallback_rps=fallback_rps,
        pg_connections_needed=pg_needed,
        pg_pool_max=pool,
        pg_connections=replicas * pool,
        postgres_cores=fallback_rps / fig.postgres_per_core.value,
    )


# -- the figures, from results.json -----------------------------------------------------------


def _kind(process: str) -> str:
    """'api-2' -> 'api' (as bench/report_render.process_kind)."""
    return process.split()[0].split("-")[0]


def _core_seconds(run: Mapping[str, Any], kinds: Sequence[str]) -> float:
    """CPU seconds the processes of these kinds spent over the run."""
    cores = sum(v for k, v in run["cpu"].items() if _kind(k) in kinds)
    return float(cores) * float(run["wall_s"])


def _per_core(run: Mapping[str, Any], kinds: Sequence[str], count: float, what: str) -> Figure:
    seconds = _core_seconds(run, kinds)
    if seconds <= 0 or count <= 0:
        raise PlanError(f"{what}: no CPU or no requests recorded")
    cores = seconds / float(run["wall_s"])
    return Figure(
        count / seconds,
        "/s per core",
        f"{what}: {count:,.0f} in {run['wall_s']:.1f} s at {cores:.3f} {'+'.join(kinds)} cores",
    )


def _step(results: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    step = results.get("steps", {}).get(name)
    if not step:
        raise PlanError(f"results.json has no `{name}` step")
    return dict(step)


def _run(results: Mapping[str, Any], step: str, label: str) -> Mapping[str, Any]:
    run = _step(results, step).get("runs", {}).get(label)
    if not run:
        raise PlanError(f"results.json's `{step}` step has no `{label}` run")
    return dict(run)


def _records(results: Mapping[str, Any]) -> tuple[int, int, str]:
    """Students and bookings the bench ran with: its config, SURGE_BOOKINGS's default else."""
    config = results.get("meta", {}).get("config", {})
    match = re.match(r"\s*([\d,]+)", str(config.get("students", "")))
    if not match:
        raise PlanError("results.json's meta.config records no students count")
    students = int(match[1].replace(",", ""))
    booked = re.match(r"\s*([\d,]+)", str(config.get("bookings", "")))
    if booked:
        return students, int(booked[1].replace(",", "")), "meta.config"
    return students, DEFAULT_BOOKINGS_IN_BENCH, "SURGE_BOOKINGS's default, not recorded"


def _resources(results: Mapping[str, Any]) -> tuple[str, Mapping[str, float]]:
    """The soak's baseline medians (steady, copies warm), else the overload's capacity phase."""
    soak = results.get("steps", {}).get("soak", {}).get("resources", {}).get("baseline median")
    if soak:
        return "soak, baseline median", soak
    over = results.get("steps", {}).get("overload", {}).get("resources", {}).get("capacity")
    if over:
        return "overload, capacity phase", over
    raise PlanError("results.json has no soak or overload resources (memory, pools)")


def derivations(results: Mapping[str, Any]) -> dict[str, Callable[[], Figure]]:
    """How each figure is derived from the steps `make bench` has always run (docs/capacity.md
    says why each is fair); each raises PlanError when its step is not in `results`."""

    def ramp(label: str = "k6") -> Mapping[str, Any]:
        return _run(results, "ramp", label)

    def cold() -> Mapping[str, Any]:
        return _run(results, "cold", "cold pass")

    def fallbacks() -> float:
        return float(cold()["store"]["lookups"].get("fallback_hit", 0))

    def pool() -> tuple[str, float]:
        where, res = _resources(results)
        pools = [v for k, v in res.items() if k.startswith("api-") and k.endswith("postgres_pool")]
        if not pools:
            raise PlanError(f"results.json's {where} resources have no postgres_pool")
        return where, max(pools)

    def per_connection() -> Figure:
        run, (_, size) = cold(), pool()
        replicas = len([k for k in run["cpu"] if _kind(k) == "api"])
        waited = float(run["store"].get("pool_waiting_max", 0))
        return Figure(
            fallbacks() / float(run["seconds"]) / (replicas * size),
            "/s per connection",
            f"cold pass: {fallbacks():,.0f} fallbacks in {run['seconds']:.1f} s over {replicas} "
            f"x {size:.0f} pool connections, up to {waited:.0f} requests waiting for one "
            "(every connection busy), the machine's cores saturated",
        )

    def pool_max() -> Figure:
        where, size = pool()
        return Figure(size, "connections", f"{where}: each replica's postgres_pool")

    def per_record(series: str) -> Figure:
        where, res = _resources(results)
        students, bookings, counted = _records(results)
        records = students + bookings
        if series == "redis":
            mib = float(res["redis used_mb"])
            what = f"Redis used_memory {mib:,.0f} MiB"
            note = f"({students:,} students + {bookings:,} bookings, {counted}), both alike"
        else:
            mib = max(v for k, v in res.items() if k.startswith("api-") and k.endswith("rss_mb"))
            what = f"the largest replica's resident memory {mib:,.0f} MiB"
            note = "(the process's own memory counted in: an upper bound)"
        return Figure(
            mib * MIB / records, "B/record", f"{where}: {what} / {records:,} records {note}"
        )

    return {
        "hit_per_core": lambda: _per_core(ramp(), ["api"], ramp()["requests"], "ramp, surge"),
        "redis_path_per_core": lambda: _per_core(
            ramp("bare handler"), ["bare"], ramp("bare handler")["requests"],
            "ramp, bare handler (Litestar + one HGET, as surge's path without its copy)",
        ),
        "fallback_per_core": lambda: _per_core(
            cold(), ["api"], fallbacks(), "cold pass: fallbacks over the replicas' whole CPU"
        ),
        "nginx_per_core": lambda: _per_core(ramp(), ["nginx"], ramp()["requests"], "ramp, surge"),
        "redis_ops_per_core": lambda: _per_core(
            ramp("bare handler"), ["redis"], ramp("bare handler")["requests"],
            "ramp, bare handler: HGETs (one a request)",
        ),
        "postgres_per_core": lambda: _per_core(cold(), ["postgres"], fallbacks(), "cold pass"),
        "fallbacks_per_connection": per_connection,
        "pool_max": pool_max,
        "redis_bytes_students": lambda: per_record("redis"),
        "redis_bytes_bookings": lambda: per_record("redis"),
        "copy_bytes_students": lambda: per_record("copy"),
        "copy_bytes_bookings": lambda: per_record("copy"),
        "replica_base_bytes": lambda: Figure(0.0, "B", "counted in the copy's bytes per record"),
    }  # fmt: skip


def figures(results: Mapping[str, Any], path: str = "") -> Figures:
    """Each figure bench/capacity_figures.py measured, else derived from the other steps."""
    measured = results.get("steps", {}).get(STEP, {}).get("figures", {})
    values: dict[str, Figure] = {}
    for name, derive in derivations(results).items():
        raw = measured.get(name)
        if raw:
            values[name] = Figure(float(raw["value"]), str(raw["unit"]), f"{STEP}: {raw['source']}")
        else:
            values[name] = derive()
    meta = results.get("meta", {})
    return Figures(str(meta.get("date", "?")), machine(meta), path, **values)


def machine(meta: Mapping[str, Any]) -> str:
    facts = dict(meta.get("machine", []))
    parts = [facts.get("CPU", "?"), f"{meta.get('nproc', facts.get('nproc', '?'))} cores"]
    if "memory" in facts:
        parts.append(str(facts["memory"]))
    return ", ".join(str(p) for p in parts)


def newest_results(root: Path = BENCHMARKS) -> Path:
    """The newest docs/benchmarks/<date>/results.json of a full run (not --quick) that every
    figure can be read from: an `--only` run of the same day may have replaced a full one."""
    dated = []
    for path in root.glob("*/results.json"):
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name):
            dated.append((datetime.date.fromisoformat(path.parent.name), path))
    for _, path in sorted(dated, reverse=True):
        results = json.loads(path.read_text())
        if results.get("meta", {}).get("quick"):
            continue
        with contextlib.suppress(PlanError, KeyError, TypeError, ValueError):
            figures(results)
            return path
    raise PlanError(f"no results.json of a full `make bench` in {root} holds every figure")


def load(path: Path | None = None) -> Figures:
    path = path or newest_results()
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read {path}: {exc}") from None
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return figures(results, str(shown))


# -- the printout -----------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:,.2f} GiB" if n_bytes >= GIB else f"{n_bytes / MIB:,.0f} MiB"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def render(p: Plan) -> str:
    d, fig = p.demand, p.figures
    grow = 1 + d.headroom
    f = d.fallback_share
    pad = " " * 17
    base = fig.replica_base_bytes.value
    redis = (
        f"a Redis Cluster: {p.redis_masters} masters + {p.redis_masters} replicas "
        f"({p.redis_nodes} nodes)"
        if p.cluster
        else "1 node, no cluster (it holds the data and takes the rate)"
    )
    lines = [
        f"capacity plan: {_n(d.students)} students + {_n(d.bookings)} bookings, peak "
        f"{_n(d.peak_rps)} lookups/s, {f:.1%} of them from Postgres",
        f"headroom {d.headroom:.0%}: every tier sized for {_n(p.load_rps)}/s ({grow:g} x the "
        f"peak): at most {1 / grow:.0%} busy at the peak",
        f"figures: {fig.path or 'results.json'}, make bench of {fig.date}",
        f"         on {fig.machine}",
        "",
        f"API replicas     {_plural(p.replicas, 'replica')} of 1 core (SURGE_REPLICAS="
        f"{p.replicas}), on {_plural(p.replica_nodes, 'node')} of {d.cores_per_node} cores",
        f"{pad}{p.replica_cores:,.1f} cores = {_n(p.load_rps)}/s x ({1 - f:.1%} / "
        f"{_n(fig.hit_per_core.value)} + {f:.1%} / {_n(fig.fallback_per_core.value)} per core)",
        f"  copies cold    {p.cold_copy_cores:,.1f} cores while every copy is empty (from Redis: "
        f"{_n(fig.redis_path_per_core.value)}/s per core)",
        f"nginx            {_plural(p.nginx_workers, 'worker')}, on "
        f"{_plural(p.nginx_nodes, 'node')} (SURGE_NGINX_WORKERS="
        f"{min(p.nginx_workers, d.cores_per_node)})",
        f"{pad}{p.nginx_cores:,.1f} cores = {_n(p.load_rps)}/s / "
        f"{_n(fig.nginx_per_core.value)} per core",
        f"replica memory   {_size(p.replica_memory_bytes)} each, "
        f"{_size(p.replica_memory_bytes * min(p.replicas, d.cores_per_node))} a node; "
        f"SURGE_LOCAL_CACHE_MB={p.local_cache_mb}",
        f"{pad}copy {_size(p.copy_bytes)} = {_n(d.students)} x "
        f"{_n(fig.copy_bytes_students.value)} B + {_n(d.bookings)} x "
        f"{_n(fig.copy_bytes_bookings.value)} B; "
        + (f"(base {_size(base)} + copy) x {grow:g}" if base else f"x {grow:g}, base included"),
        f"Redis            {redis}",
        f"  memory         {_size(p.redis_bytes)} = {REDIS_VERSIONS} versions x "
        f"({_n(d.students)} x {_n(fig.redis_bytes_students.value)} B + {_n(d.bookings)} x "
        f"{_n(fig.redis_bytes_bookings.value)} B) x {grow:g}",
        f"{pad}{d.redis_node_gb:g} GiB a node: {_plural(p.redis_masters_for_memory, 'node')}",
        f"  ops            {_n(p.redis_ops)}/s = {_n(p.load_rps)}/s x (1 + {f:.1%}), the copies "
        f"cold; {_n(fig.redis_ops_per_core.value)}/s a node: "
        f"{_plural(p.redis_masters_for_ops, 'node')}",
        f"Postgres         {_n(p.fallback_rps)} fallbacks/s = {_n(p.load_rps)}/s x {f:.1%}; "
        f"{p.postgres_cores:,.2f} cores at {_n(fig.postgres_per_core.value)}/s per core",
        f"  connections    {p.pg_connections:,} = {_plural(p.replicas, 'replica')} x "
        f"SURGE_PG_POOL_MAX={p.pg_pool_max}",
        f"{pad}the fallback rate needs {p.pg_connections_needed:,}, at "
        f"{fig.fallbacks_per_connection.value:,.1f}/s per connection",
    ]
    usable = PG_MAX_CONNECTIONS - PG_RESERVED
    total = p.pg_connections + PG_OTHER_CONNECTIONS
    if total > usable:
        lines.append(
            f"{pad}{total:,} with the seeder, keeper and exporter: above Postgres's default\n"
            f"{pad}max_connections ({PG_MAX_CONNECTIONS}, {PG_RESERVED} reserved): raise it or "
            "pool them (PgBouncer)"
        )
    return "\n".join(lines) + "\n"


def figures_table(fig: Figures) -> str:
    """The inputs with their sources, for --figures and docs/capacity.md."""
    rows = ["| figure | value | source |", "|---|---|---|"]
    for name, figure in fig.measured():
        rows.append(f"| {name} | {figure.value:,.1f} {figure.unit} | {figure.source} |")
    return "\n".join(rows) + "\n"


# -- the command ------------------------------------------------------------------------------


def _count(raw: str) -> int:
    text = raw.replace(",", "").replace("_", "").strip()
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number")
    return int(text)


def _number(raw: str) -> float:
    try:
        return float(raw.replace(",", "").replace("_", "").strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None


def _share(raw: str) -> float:
    """'50%' or '0.5'. A bare number above 10 is refused: 50 would mean 5,000%."""
    text = raw.strip()
    if text.endswith("%"):
        return _number(text[:-1]) / 100
    value = _number(text)
    if value > 10:
        raise argparse.ArgumentTypeError(f"{raw!r}: a fraction (0.5) or a percentage (50%)")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    default = {f.name: f.default for f in fields(Demand)}
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--students", type=_count, required=True)
    parser.add_argument("--peak-rps", type=_number, required=True, help="peak lookups a second")
    parser.add_argument("--bookings", type=_count, default=default["bookings"])
    parser.add_argument("--headroom", type=_share, default=default["headroom"], help="50%% or 0.5")
    parser.add_argument(
        "--fallback-share", type=_share, default=default["fallback_share"], help="1%% or 0.01"
    )
    parser.add_argument("--cores-per-node", type=_count, default=default["cores_per_node"])
    parser.add_argument("--redis-node-gb", type=_number, default=default["redis_node_gb"])
    parser.add_argument("--results", type=Path, help="a results.json (default: the newest)")
    parser.add_argument("--figures", action="store_true", help="also list the inputs")
    args = parser.parse_args(argv)
    demand = Demand(
        students=args.students,
        peak_rps=args.peak_rps,
        bookings=args.bookings,
        headroom=args.headroom,
        fallback_share=args.fallback_share,
        cores_per_node=args.cores_per_node,
        redis_node_gb=args.redis_node_gb,
    )
    try:
        found = load(args.results)
        print(plan(demand, found).render(), end="")
    except PlanError as exc:
        print(f"capacity: {exc}", file=sys.stderr)
        return 2
    if args.figures:
        print()
        print(figures_table(found), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
