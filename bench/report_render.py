"""The pure half of bench/report.py: targets, the saturation verdict, markdown and charts.

Everything here works on the results dict bench/report.py collects (and saves as results.json
next to the charts), so it can be re-rendered and tested without any load:

    {"meta": {"date", "command", "quick", "nproc", "machine": [[k, v]], "config": {k: v}},
     "steps": {name: {"runs": {label: run}, ...}},       a run: rps, p50_ms, p95_ms, p99_ms,
     "failures": {name: message}}                          errors, cpu {process: cores},
                                                           store {pool_waiting_max, ...}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEPS = (
    "fixed", "ramp", "spike", "results_day", "cold", "replicas", "metrics", "capacity_figures",
    "redis_cluster", "netns_ramp", "overload", "redis_empty", "postgres_gone", "unknown_flood",
    "soak",
)  # fmt: skip
TITLES = {
    "fixed": "Fixed concurrency: surge vs the bare handler, through nginx",
    "ramp": "The 3,000-VU reference ramp (k6)",
    "spike": "Spike to 3,000 VUs within 5 s (k6)",
    "results_day": "Results day: steep arrivals, each person looking several times (k6)",
    "cold": "Cold cache: Redis emptied, served via Postgres, then warm",
    "replicas": "1 vs 2 vs 3 replicas behind nginx",
    "metrics": "Metrics on vs off (one replica, no nginx)",
    "capacity_figures": "Capacity figures: each lookup path alone, bytes per record",
    "redis_cluster": "One Redis vs a Redis Cluster (one replica, its copy off, no nginx)",
    "netns_ramp": "The reference ramp across a network: hosts ~1 ms apart (k6, namespaces)",
    "overload": "Three times capacity: refused fast, bounded, recovered",
    "redis_empty": "Redis emptied at half capacity: refilled, nothing failed",
    "postgres_gone": "Postgres gone for a minute at half capacity",
    "unknown_flood": "A flood of distinct unknown ids at full capacity",
    "soak": "Soak at half capacity: does anything grow?",
}
ASSERTED = ("netns_ramp", "overload", "redis_empty", "postgres_gone", "unknown_flood", "soak")
"""Steps whose targets are assertions: a miss makes `make bench` exit non-zero. The
others are performance figures of a shared machine: reported met or missed, never failing."""
OVERLOAD_REFUSAL_P99_MS = 250.0
"""'Fast 503': the probe's refusals at three times capacity (measured 60-105 ms on the 2 busy
cores; an admitted lookup's p99 was 150-370 ms in the same runs)."""
OVERLOAD_MAX_MS = 2000.0
"""No answer near a timeout: nginx gives a replica 5 s, clients typically 10-30 s."""
OVERLOAD_GOODPUT = 0.50
"""200/s at three times capacity, as a share of the capacity: the load generator (wrk, sending
~4x the capacity) and nginx's refusals take CPU from the replicas on the same 2 cores."""
OVERLOAD_MEMORY_GROWTH = 0.10
RECOVERY_SHARE = 0.90
"""'Recovered': the capacity run right after the overload within 10% of the one before it (as
WARM_TOLERANCE: rounds on this box vary that much)."""
SOAK_MEMORY_GROWTH = 0.05
SOAK_RATE_SHARE = 0.40
"""'About half capacity': the paced connections send a little under half (latency adds)."""
SOAK_COUNTS = ("tasks", "fds", "redis_pool", "postgres_pool", "active", "clients", "backends")
"""Counts that must not grow in the soak (bench/resources.py's series, by their last word)."""
WARM_TOLERANCE = 0.90
"""'The second pass at the warm rate': within 10% of it (rounds on this box vary that much)."""
METRICS_MAX_COST = 0.05
SATURATED = 0.85
"""A single-threaded process (nginx worker, Granian worker, Redis) above this many cores is
treated as saturated; the machine as a whole above this share of its cores."""


@dataclass(frozen=True)
class Target:
    step: str
    name: str
    measured: float
    goal: float
    higher_is_better: bool
    unit: str = ""
    figure_only: bool = False
    """Reported, never failing the bench (in an asserted step: a configuration shown beside
    the asserted one)."""

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.goal
        return self.measured <= self.goal

    @property
    def gap(self) -> float:
        """How far from the goal, in the target's unit (0 when met)."""
        return 0.0 if self.met else abs(self.measured - self.goal)

    @property
    def gap_ratio(self) -> float:
        """The gap relative to the goal (0.25 = missed by 25% of the goal)."""
        return self.gap / self.goal if self.goal else (float("inf") if self.gap else 0.0)

    def describe(self) -> str:
        sign = "≥" if self.higher_is_better else "≤"
        measured, goal = fmt(self.measured, self.unit), fmt(self.goal, self.unit)
        if self.met:
            return f"met: {measured} ({sign} {goal})"
        if self.goal == 0:
            return f"**missed**: {measured} ({sign} {goal})"
        if self.unit == "%":  # a share: the gap in percentage points says it best
            return f"**missed by {self.gap * 100:.1f} points**: {measured} ({sign} {goal})"
        gap = f"{fmt(self.gap, self.unit)} ({self.gap_ratio:.0%} of the goal)"
        return f"**missed by {gap}**: {measured} ({sign} {goal})"


def fmt(value: float, unit: str = "") -> str:
    if unit == "%":
        return f"{value:.1%}"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":
        return "never" if value == float("inf") else f"{value:,.1f} s"
    return f"{value:,.0f}{(' ' + unit) if unit else ''}"


SERVER_US_PER_REQUEST = 200.0
FIXED_OVER_BARE = 1.3
SERVER_KINDS = ("api", "bare", "granian", "nginx", "redis", "postgres")
REPLICA_KINDS = ("api", "bare", "granian")
STACK_FLOOR = "stack floor"
"""The k6 steps' run against Granian + nginx serving fixed bytes (bench/raw_asgi.py)."""


def server_us_per_request(run: Mapping[str, Any]) -> float:
    """CPU µs the serving processes (replicas, nginx, Redis, Postgres) spent per request."""
    cores = sum(v for k, v in run.get("cpu", {}).items() if process_kind(k) in SERVER_KINDS)
    requests = run.get("requests") or 0
    return cores * run.get("wall_s", 0.0) / requests * 1e6 if requests else 0.0


def targets(results: Mapping[str, Any]) -> list[Target]:
    """The performance and reliability targets, for the steps that ran."""
    steps = results.get("steps", {})
    out: list[Target] = []
    fixed = steps.get("fixed", {}).get("runs", {})
    if "surge" in fixed and "bare handler" in fixed:
        s, b = fixed["surge"], fixed["bare handler"]
        out.append(
            Target(
                "fixed",
                "surge req/s ≥ 1.3 x the bare handler's",
                s["rps"],
                FIXED_OVER_BARE * b["rps"],
                True,
                "req/s",
            )
        )
        out.append(Target("fixed", "surge errors", s["errors"], 0, False, "errors"))
    for step, p95, p99 in (
        ("ramp", 20.0, 100.0),
        ("spike", None, 100.0),
        ("results_day", 20.0, 100.0),
    ):
        run = steps.get(step, {}).get("runs", {}).get("k6")
        if not run:
            continue
        out.append(Target(step, "failed requests", run["errors"], 0, False, "failed"))
        if p95 is not None:
            out.append(Target(step, "p95", run["p95_ms"], p95, False, "ms"))
        out.append(Target(step, "p99", run["p99_ms"], p99, False, "ms"))
        if step == "ramp" and server_us_per_request(run):
            out.append(
                Target(step, "server CPU per request (replicas, nginx, Redis, Postgres)",
                       server_us_per_request(run), SERVER_US_PER_REQUEST, False, "µs")
            )  # fmt: skip
    cold = steps.get("cold", {}).get("runs", {})
    if {"warm", "cold pass", "second pass"} <= set(cold):
        warm = cold["warm"]["rps"]
        if warm:
            first, second = cold["cold pass"]["rps"] / warm, cold["second pass"]["rps"] / warm
            out.append(Target("cold", "cold pass / warm rate", first, 0.40, True, "%"))
            out.append(Target("cold", "second pass / warm rate", second, WARM_TOLERANCE, True, "%"))
    metrics = steps.get("metrics", {}).get("runs", {})
    if "metrics on" in metrics and "metrics off" in metrics and metrics["metrics off"]["rps"]:
        cost = 1 - metrics["metrics on"]["rps"] / metrics["metrics off"]["rps"]
        out.append(Target("metrics", "req/s cost of metrics", cost, METRICS_MAX_COST, False, "%"))
    out += cluster_targets(steps.get("redis_cluster", {}))
    out += netns_targets(steps.get("netns_ramp", {}))
    nproc = int(results.get("meta", {}).get("nproc", 1))
    out += overload_targets(steps.get("overload", {}), nproc)
    out += recovery_targets(steps)
    out += soak_targets(steps.get("soak", {}))
    return out


def cluster_targets(step: Mapping[str, Any]) -> list[Target]:
    """redis_cluster's honest targets: with the copy off and Redis full, every lookup is a 200
    answered by Redis, in either mode. Its req/s and CPU are figures (cluster_table)."""
    out = []
    for label, run in step.get("runs", {}).items():
        short = label.split(" (")[0]
        lookups = run.get("store", {}).get("lookups", {})
        elsewhere = sum(v for k, v in lookups.items() if k != "redis_hit")
        out += [
            Target("redis_cluster", f"{short}: errors", run["errors"], 0, False, "errors"),
            Target("redis_cluster", f"{short}: lookups not answered by Redis", elsewhere, 0,
                   False, "lookups"),
        ]  # fmt: skip
    return out


def netns_targets(step: Mapping[str, Any]) -> list[Target]:
    """netns_ramp: no failed request on surge across the network (the floor is its figure)."""
    run = step.get("runs", {}).get("surge")
    return (
        [Target("netns_ramp", "surge: failed requests", run["errors"], 0, False, "failed")]
        if run
        else []
    )


def cluster_kind(process: str) -> str:
    """redis_cluster's tiers: the replica, Redis (every node summed), Postgres, the rest."""
    kind = process_kind(process)
    return {"api": "replica", "redis": "redis", "postgres": "postgres"}.get(kind, "")


def cluster_table(step: Mapping[str, Any]) -> str:
    """redis_cluster: CPU µs per request per tier for each configuration, and cluster / single
    for every figure."""
    runs = step.get("runs", {})
    if len(runs) != 2:
        return ""
    tiers = ("replica", "redis", "postgres")
    figures: dict[str, dict[str, float]] = {}
    for label, run in runs.items():
        requests = run.get("requests") or 0
        row = {"rps": run["rps"], "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"]}
        row |= dict.fromkeys(tiers, 0.0)
        for process, cores in run.get("cpu", {}).items():
            kind = cluster_kind(process)
            if kind and requests:
                row[kind] += cores * run.get("wall_s", 0.0) / requests * 1e6
        row["server"] = sum(row[t] for t in tiers)
        idle = sum(step.get("redis_idle_cores", {}).get(label, {}).values())
        # What Redis spends with no load at all, spread over the run's requests, taken off
        row["redis_busy"] = max(0.0, row["redis"] - (idle * 1e6 / run["rps"] if run["rps"] else 0))
        row["redis_idle"] = idle
        figures[label] = row
    one, many = figures.values()  # single, then cluster (the step's order)
    columns = ("rps", "p50_ms", "p99_ms", *tiers, "server", "redis_idle", "redis_busy")
    heads = ("req/s", "p50 ms", "p99 ms", "replica µs/request", "Redis µs/request",
             "Postgres µs/request", "server µs/request", "Redis idle, cores",
             "Redis µs/request above idle")  # fmt: skip
    rows = ["| configuration | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for label, row in figures.items():
        cells = [
            f"{row[c]:,.0f}" if c == "rps" else f"{row[c]:.3f}" if c == "redis_idle"
            else f"{row[c]:,.1f}" for c in columns
        ]  # fmt: skip
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = [f"{many[c] / one[c]:.2f}x" if one[c] else "-" for c in columns]
    rows.append("| cluster / single | " + " | ".join(ratios) + " |")
    return "\n".join(rows)


def offered(run: Mapping[str, Any]) -> float:
    """Requests a second sent (every answer, refusals included)."""
    return float(run["requests"]) / max(float(run["seconds"]), 1e-6)


def improper(run: Mapping[str, Any]) -> float:
    """Answers that are neither a 200 nor a refusal done right (Retry-After, problem+json), plus
    requests without an answer (refused connection, reset, timeout)."""
    return float(run["other"] + run["refused_bare"] + run["socket_errors"])


def growth(
    resources: Mapping[str, Mapping[str, float]], key: str, before: str, after: str
) -> float:
    """Relative growth of one series from one column of a resources table to another."""
    first = resources.get(before, {}).get(key, 0.0)
    last = resources.get(after, {}).get(key, 0.0)
    return (last - first) / first if first else 0.0


def overload_targets(step: Mapping[str, Any], nproc: int) -> list[Target]:
    runs, res = step.get("runs", {}), step.get("resources", {})
    if not {"capacity", "3x capacity", "recovery"} <= set(runs):
        return []
    capacity, over, after = runs["capacity"], runs["3x capacity"], runs["recovery"]
    cap = capacity["rps"] or 1e-6
    # Asserted where the machine can offer it: the floor run of the same step shows whether
    # the cores left beside the served 200s could send and answer three times the capacity.
    floor = step.get("floor")
    bounded = floor is not None and offered_most(runs, floor, nproc)[0] < 3.0 * cap
    out = [
        Target("overload", "offered load / capacity", offered(over) / cap, 3.0, True, "x",
               figure_only=bounded),
        Target("overload", "answers at 3x: not 200, no Retry-After, or none", improper(over), 0,
               False, "answers"),
        Target("overload", "slowest answer at 3x", over["max_ms"], OVERLOAD_MAX_MS, False, "ms"),
        Target("overload", "200/s at 3x / capacity", over["rps"] / cap, OVERLOAD_GOODPUT, True,
               "%"),
    ]  # fmt: skip
    probe = step.get("probe", {}).get("3x capacity", {})
    refusals = probe.get("503", {})
    if refusals:
        out.append(
            Target("overload", "a newcomer's 503 at 3x, p99", refusals["p99_ms"],
                   OVERLOAD_REFUSAL_P99_MS, False, "ms")
        )  # fmt: skip
    if probe:
        out.append(
            Target("overload", "a newcomer's lookups at 3x without an answer",
                   probe.get("0", {}).get("count", 0), 0, False, "lookups")
        )  # fmt: skip
    memory = [k for k in res.get("capacity", {}) if k.endswith("rss_mb") and "redis" not in k]
    if memory:
        worst = max(memory, key=lambda k: growth(res, k, "capacity", "3x capacity"))
        out.append(
            Target("overload", f"memory at 3x vs at capacity (worst: {worst.split()[0]})",
                   growth(res, worst, "capacity", "3x capacity"), OVERLOAD_MEMORY_GROWTH, False,
                   "%")
        )  # fmt: skip
    out += [
        Target("overload", "recovery: 200/s / capacity", after["rps"] / cap, RECOVERY_SHARE, True,
               "%"),
        Target("overload", "recovery: answers other than 200", float(after["non_2xx"])
               + after["socket_errors"], 0, False, "answers"),
    ]  # fmt: skip
    return out


REDIS_BACK_S = 30.0
"""Lookups served without Postgres (the copy or Redis) again, ≥ 90% of them, within this..."""
REDIS_WHOLE_S = 60.0
"""... and Redis whole again (a live version the seeder marked complete) within this."""
FULL_LOAD = "copy on, full load"
"""redis_empty's run that takes all the capacity the refill leaves."""
LOWEST_CAPACITY_SHARE = 1.0
"""At full load, no second of the refill serves fewer lookups than this share of the
half-capacity load: the refill never takes the capacity below it."""
UNAVAILABLE_MS = 1000.0
FULL_SERVICE_S = 5.0


def recovery_targets(steps: Mapping[str, Any]) -> list[Target]:
    """bench/recovery.py's steps."""
    out = []
    for label, f in steps.get("redis_empty", {}).get("figures", {}).items():
        whole = f["whole_again_s"]
        # Asserted as surge runs (its copies on). Without copies every lookup reads Postgres
        # until the refill, far below half the capacity: figures beside it, not assertions.
        shown = label != "copy on"
        if label == FULL_LOAD:
            lowest = f.get("lowest_rate_vs_half_capacity")
            out += [
                Target("redis_empty", f"{label}: failed requests", f["failed"], 0, False,
                       "failed"),
                Target("redis_empty", f"{label}: lowest second's lookups / half the capacity",
                       0.0 if lowest is None else lowest, LOWEST_CAPACITY_SHARE, True, "%"),
            ]  # fmt: skip
            continue
        lowest = f["lowest_rate_vs_load"]
        out += [
            Target("redis_empty", f"{label}: failed requests", f["failed"], 0, False, "failed",
                   shown),
            Target("redis_empty", f"{label}: ≥ 90% served without Postgres again after",
                   f["served_without_postgres_90_s"], REDIS_BACK_S, False, "s", shown),
            Target("redis_empty", f"{label}: Redis whole again after",
                   float("inf") if whole is None else whole, REDIS_WHOLE_S, False, "s", shown),
            # A paced closed loop on the same two cores: a crowd that waits longer asks less.
            # The capacity the refill leaves is asserted at full load instead.
            Target("redis_empty", f"{label}: lowest second's lookups / the load before",
                   0.0 if lowest is None else lowest, 0.90, True, "%", True),
        ]  # fmt: skip
    gone = steps.get("postgres_gone", {}).get("figures", {}).get("postgres gone")
    if gone:
        out += [
            Target("postgres_gone", "cached lookups failed", gone["cached_failed"], 0, False,
                   "failed"),
            Target("postgres_gone", "misses asked during the outage", gone["misses_during"],
                   10, True, "lookups"),
            Target("postgres_gone", "misses not answered 503 + Retry-After + problem+json",
                   gone["misses_not_a_proper_503"], 0, False, "lookups"),
            Target("postgres_gone", "slowest 503", gone["slowest_503_ms"], UNAVAILABLE_MS, False,
                   "ms"),
            Target("postgres_gone", "full service after its return", gone["full_service_s"],
                   FULL_SERVICE_S, False, "s"),
        ]  # fmt: skip
        for key, before in gone.items():
            if key.endswith(" before (median)"):  # memory
                name = key.removesuffix(" before (median)")
                after = gone[f"{name} after (median)"]
                growth_ = (after - before) / before if before else 0.0
                out.append(Target("postgres_gone", f"{name.split()[0]} memory after vs before",
                                  growth_, OVERLOAD_MEMORY_GROWTH, False, "%"))  # fmt: skip
            elif key.endswith(" before (min)"):  # tasks, by their floor
                name = key.removesuffix(" before (min)")
                after = gone[f"{name} after (min)"]
                out.append(Target("postgres_gone", f"{name} after - before (floors)",
                                  after - before, count_allowance(before), False))  # fmt: skip
    flood = steps.get("unknown_flood", {})
    f = flood.get("figures", {}).get("flood")
    if f:
        unknown = [r for label, r in flood["runs"].items() if label.startswith("unknown ids")]
        known_p99 = f["probe_p99_known_ms"]
        out += [
            Target("unknown_flood", "lookups that asked Postgres during the flood",
                   f["postgres_asked_unknown"], 0, False, "lookups"),
            Target("unknown_flood", "flood answers other than 404",
                   sum(improper(run) for run in unknown), 0, False, "answers"),
            Target("unknown_flood", "a newcomer's known-id p99 during the flood",
                   f["probe_p99_flood_ms"], max(1.5 * known_p99, known_p99 + 2.0), False, "ms"),
        ]  # fmt: skip
    return out


def count_allowance(baseline: float) -> float:
    """How much a count may be above its baseline median at the end and still 'not grow': 10%,
    rounded up to a whole count, at least 2 (a count under load moves with the requests in
    flight)."""
    return float(max(2, math.ceil(0.10 * baseline)))


def soak_targets(step: Mapping[str, Any]) -> list[Target]:
    run = step.get("runs", {}).get("soak")
    res = step.get("resources", {})
    if not run:
        return []
    out = [
        Target("soak", "failed requests", float(improper(run) + run["refused"]), 0, False,
               "failed"),
        Target("soak", "offered load / capacity", offered(run) / (run["capacity_rps"] or 1e-6),
               SOAK_RATE_SHARE, True, "%"),
    ]  # fmt: skip
    base = res.get("baseline median", {})
    replicas = [k for k in base if k.startswith("api-") and k.endswith("rss_mb")]
    if replicas:
        worst = max(replicas, key=lambda k: growth(res, k, "baseline median", "final median"))
        out.append(
            Target("soak", f"replica memory growth, median (worst: {worst.split()[0]})",
                   growth(res, worst, "baseline median", "final median"), SOAK_MEMORY_GROWTH,
                   False, "%")
        )  # fmt: skip
    # Counts by their floor: tasks, fds and pool connections move with the requests in flight
    # at the moment of a sample; what a leak leaves behind raises the minimum.
    floor, final = res.get("baseline min", {}), res.get("final min", {})
    for kind in SOAK_COUNTS:
        keys = [k for k in floor if k.split()[-1] == kind and k in final]
        if not keys:
            continue
        worst = max(keys, key=lambda k: final[k] - floor[k] - count_allowance(floor[k]))
        out.append(
            Target("soak", f"{worst} at the end - baseline (minimum)",
                   final[worst] - floor[worst], count_allowance(floor[worst]), False)
        )  # fmt: skip
    return out


def histogram_quantile(cumulative: Mapping[float, float], q: float) -> float:
    """The q-quantile of a Prometheus histogram's cumulative bucket counts {upper bound: count},
    interpolated linearly inside the bucket it falls in (as PromQL's histogram_quantile); 0
    without observations; the highest finite bound when it falls in +Inf."""
    bounds = sorted(cumulative)
    total = cumulative.get(float("inf"), cumulative[bounds[-1]] if bounds else 0.0)
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


# -- which tier saturated first ---------------------------------------------------------------


def process_kind(name: str) -> str:
    """'api-2' -> 'api', 'nginx (bare)' -> 'nginx'."""
    return name.split()[0].split("-")[0]


MACHINE_SHARES = ("other", "steal")
"""The run's CPU columns that are not a process of the load's: the rest of the machine's work,
and the time the hypervisor ran other guests on its cores."""

SINGLE_THREADED = {"nginx", "api", "bare", "granian", "redis", "wrk", "netdelay"}
"""One core at most each: one nginx worker, one Granian worker per replica, Redis's event loop,
wrk -t1, a host's packet delay (Python). Postgres (a backend per connection) and k6 (Go) can
use several."""


def saturation(run: Mapping[str, Any], nproc: int) -> str:
    """Which tier ran out first in one run, from CPU per process and the replicas' pool waits."""
    cpu: dict[str, float] = dict(run.get("cpu", {}))
    if not cpu:
        return "no CPU samples"
    store = run.get("store", {})
    notes = []
    if store.get("pool_waiting_max", 0) > 0:
        notes.append(
            f"requests queued for a Postgres connection (up to {store['pool_waiting_max']:.0f} "
            "at once): the Postgres pool was the bottleneck of the fallback path"
        )
    if store.get("store_errors", 0) > 0:
        notes.append(f"{store['store_errors']:.0f} failed store calls")
    total = sum(cpu.values())
    hot = [
        (cores, name)
        for name, cores in cpu.items()
        if process_kind(name) in SINGLE_THREADED and cores >= SATURATED
    ]
    ours = {k: v for k, v in cpu.items() if k not in MACHINE_SHARES} or cpu
    busiest = max(ours.items(), key=lambda kv: kv[1])
    if hot:
        cores, name = max(hot)
        verdict = f"{name} saturated its core ({cores:.2f} cores)"
    elif total >= SATURATED * nproc:
        verdict = (
            f"the machine's {nproc} cores were saturated ({total:.2f} busy); the largest share: "
            f"{busiest[0]} ({busiest[1]:.2f} cores)"
        )
        if cpu.get("other", 0) >= 0.25:
            verdict += f"; other work on the machine took {cpu['other']:.2f} cores (noise)"
        if cpu.get("steal", 0) >= 0.1:
            verdict += f"; the hypervisor took {cpu['steal']:.2f} cores (steal)"
    else:
        verdict = (
            f"no tier saturated (busiest: {busiest[0]}, {busiest[1]:.2f} cores; "
            f"{total:.2f} of {nproc} cores busy): latency or think time bound the rate"
        )
    return "; ".join([verdict, *notes])


def why(target: Target, results: Mapping[str, Any]) -> str:
    """A computed reason for a missed target: the step's saturation verdict and its error mix."""
    if target.met:
        return ""
    step = results["steps"].get(target.step, {})
    nproc = int(results.get("meta", {}).get("nproc", 1))
    runs = step.get("runs", {})
    label = {
        "fixed": "surge",
        "ramp": "k6",
        "spike": "k6",
        "results_day": "k6",
        "metrics": "metrics on",
        "overload": "recovery" if target.name.startswith("recovery") else "3x capacity",
        "soak": "soak",
    }.get(target.step, "cold pass" if "cold pass" in target.name else "second pass")
    run: Mapping[str, Any] = runs.get(label) or next(iter(runs.values()), {})
    reasons = [saturation(run, nproc)]
    if target.step == "fixed" and "bare handler" in runs:
        bare = runs["bare handler"].get("cpu", {})
        ours = run.get("cpu", {})
        api = sum(v for k, v in ours.items() if process_kind(k) == "api")
        bare_api = sum(v for k, v in bare.items() if process_kind(k) == "bare")
        if api and bare_api and run.get("rps") and runs["bare handler"].get("rps"):
            per_req = api / run["rps"] * 1e6
            bare_per_req = bare_api / runs["bare handler"]["rps"] * 1e6
            reasons.append(
                f"surge's replicas spent {per_req:.0f} µs of CPU per request, the bare "
                f"handler's {bare_per_req:.0f} µs"
            )
    floor = step.get("floor")
    if target.step == "overload" and target.name.startswith("offered") and floor:
        reasons.append(offered_bound(runs, floor, nproc))
    if target.unit == "µs" and runs.get(STACK_FLOOR, {}).get("requests"):
        reasons.append(stack_floor_share(run, runs[STACK_FLOOR]))
    timeline = step.get("timeline") or []
    if target.name.startswith("p") and timeline:
        # k6 times each request from the client; the replicas time it from their side. When
        # theirs stays small, the wait was outside the replicas.
        served = max((point["p95_ms"] for point in timeline), default=0.0)
        reasons.append(
            f"the replicas' own p95 stayed ≤ {served:.1f} ms in every second of the run, so the "
            "time was spent outside them: in nginx, the network stack, or the load generator "
            "(k6, on the same 2 cores)"
        )
    if target.name.startswith("p") and run.get("stall_series"):
        reasons.append(machine_stalls(run, target.goal))
    if run.get("losses"):
        lost = run["losses"]
        reasons.append(
            f"the network meanwhile: {lost['delay_queue_dropped']:,} packets dropped by the "
            f"delay queues, {lost['tcp_retransmitted']:,} TCP segments retransmitted"
        )
    if run.get("errors"):
        reasons.append(f"{run['errors']:.0f} errors ({run.get('error_detail', 'see the log')})")
    lookups = run.get("store", {}).get("lookups", {})
    if lookups:
        mix = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(lookups.items()))
        reasons.append(f"lookups: {mix}")
    return "; ".join(r for r in reasons if r)


def machine_stalls(run: Mapping[str, Any], goal_ms: float) -> str:
    """The machine's own stalls (bench/stall_probe.py) in the seconds whose client p99 passed
    the goal, beside those of the rest of the run."""
    slow = {round(p["t"]) for p in run.get("client_series", []) if p.get("p99_ms", 0) > goal_ms}
    near = {t + d for t in slow for d in (-1, 0, 1)}  # the two clocks' seconds may straddle
    inside = [p["stall_ms"] for p in run["stall_series"] if round(p["t"]) in near]
    outside = [p["stall_ms"] for p in run["stall_series"] if round(p["t"]) not in near]
    if not inside:
        return ""
    return (
        f"a real-time sleeper on the same machine (bench/stall_probe.py) overslept up to "
        f"{max(inside):.0f} ms in the {len(slow)} second(s) whose client p99 passed the goal, "
        f"{max(outside, default=0.0):.0f} ms in the rest of the run"
    )


def offered_most(
    runs: Mapping[str, Any], floor: Mapping[str, Any], nproc: int
) -> tuple[float, float, float]:
    """The most load (req/s) the machine could offer at 3x while serving what it served there:
    the cores the 200s took (at the capacity phase's cost per answer, everything counted), the
    rest spent on answers that cost no more than the floor nginx's fixed body (same wrk, run).
    With it, the two costs (CPU seconds per answer at capacity, per floor answer)."""
    capacity, over = runs["capacity"], runs["3x capacity"]
    per_answer = sum(capacity.get("cpu", {}).values()) / (capacity["rps"] or 1e-6)
    per_floor_answer = sum(floor.get("cpu", {}).values()) / max(offered(floor), 1e-6)
    spare = max(0.0, nproc - over["rps"] * per_answer)
    return float(over["rps"] + spare / max(per_floor_answer, 1e-9)), per_answer, per_floor_answer


def offered_bound(runs: Mapping[str, Any], floor: Mapping[str, Any], nproc: int) -> str:
    over = runs["3x capacity"]
    cap = runs["capacity"]["rps"] or 1e-6
    most, per_answer, per_floor_answer = offered_most(runs, floor, nproc)
    return (
        f"the same wrk against nginx answering a fixed body by itself (the floor, same run) got "
        f"{offered(floor):,.0f} answers/s at {per_floor_answer * 1e6:.0f} µs of CPU each "
        f"(wrk included); beside the {over['rps']:,.0f} 200/s served at 3x "
        f"({per_answer * 1e6:.0f} µs each at capacity), the {nproc} cores could send and "
        f"answer at most {most:,.0f} req/s, {most / cap:.2f}x the capacity"
    )


def stack_floor_share(run: Mapping[str, Any], floor: Mapping[str, Any]) -> str:
    """How much of surge's CPU per request the server stack costs by itself (same run)."""
    ours, bare = server_us_per_request(run), server_us_per_request(floor)

    def tier(r: Mapping[str, Any], kinds: tuple[str, ...]) -> float:
        cores = sum(v for k, v in r.get("cpu", {}).items() if process_kind(k) in kinds)
        return float(cores * r.get("wall_s", 0.0) / (r.get("requests") or 1) * 1e6)

    replicas = tier(run, REPLICA_KINDS) - tier(floor, REPLICA_KINDS)
    return (
        f"the server stack alone, in the same run (Granian serving fixed bytes behind the same "
        f"nginx, bench/raw_asgi.py), cost {bare:.0f} µs per request (Granian "
        f"{tier(floor, REPLICA_KINDS):.0f}, nginx {tier(floor, ('nginx',)):.0f}): "
        f"{bare / SERVER_US_PER_REQUEST:.0%} of the goal before any lookup; surge's own work "
        f"on top: {ours - bare:.0f} µs (replicas {replicas:.0f}, "
        f"nginx {tier(run, ('nginx',)) - tier(floor, ('nginx',)):.0f}, Redis and Postgres "
        f"{tier(run, ('redis', 'postgres')):.0f}){steal_note(floor, run)}"
    )


def steal_note(floor: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """The hypervisor's steal in both runs, when the runs recorded it."""
    if "steal" not in floor.get("cpu", {}) or "steal" not in run.get("cpu", {}):
        return ""
    return (
        f"; the hypervisor took {floor['cpu']['steal']:.2f} cores (steal) during the stack "
        f"floor's run, {run['cpu']['steal']:.2f} during surge's"
    )


# -- markdown ---------------------------------------------------------------------------------


def _num(run: Mapping[str, Any], key: str, pattern: str = "{:,.1f}") -> str:
    value = run.get(key)
    return "-" if value is None else pattern.format(value)


def runs_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        "| configuration | req/s | p50 ms | p95 ms | p99 ms | requests | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, run in runs.items():
        rows.append(
            f"| {label} | **{_num(run, 'rps', '{:,.0f}')}** | {_num(run, 'p50_ms')} "
            f"| {_num(run, 'p95_ms')} | {_num(run, 'p99_ms')} "
            f"| {_num(run, 'requests', '{:,.0f}')} | {_num(run, 'errors', '{:,.0f}')} |"
        )
    return "\n".join(rows)


def network_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """netns_ramp: packets the delay queues dropped and TCP segments sent again, per run."""
    rows = [
        "| configuration | packets dropped by the delay queues | TCP segments retransmitted "
        "| the machine's worst stall |",
        "|---|---|---|---|",
    ]
    for label, run in runs.items():
        if "losses" in run:
            lost = run["losses"]
            rows.append(
                f"| {label} | {lost['delay_queue_dropped']:,} | {lost['tcp_retransmitted']:,} "
                f"| {run.get('stall_ms_max', 0):.0f} ms |"
            )
    return "\n".join(rows) if len(rows) > 2 else ""


def cpu_table(runs: Mapping[str, Mapping[str, Any]], nproc: int) -> str:
    names: list[str] = []
    for run in runs.values():
        names += [n for n in run.get("cpu", {}) if n not in names]
    if not names:
        return ""
    rows = [
        "| configuration | " + " | ".join(names) + " | pool waiting (max) | store errors "
        "| lookups | first to saturate |",
        "|---|" + "---|" * (len(names) + 4),
    ]
    for label, run in runs.items():
        cpu, store = run.get("cpu", {}), run.get("store", {})
        cells = " | ".join(f"{cpu[n]:.2f}" if n in cpu else "-" for n in names)
        lookups = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(store.get("lookups", {}).items()))
        rows.append(
            f"| {label} | {cells} | {_num(store, 'pool_waiting_max', '{:.0f}')} "
            f"| {_num(store, 'store_errors', '{:.0f}')} | {lookups or '-'} "
            f"| {saturation(run, nproc)} |"
        )
    return "\n".join(rows)


def resources_table(resources: Mapping[str, Mapping[str, float]]) -> str:
    """One row per series (e.g. `api-1 rss_mb`), one column per phase or window."""
    columns = list(resources)
    keys: list[str] = []
    for column in columns:
        keys += [k for k in resources[column] if k not in keys]
    rows = ["| series | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for key in sorted(keys):
        cells = [resources[c].get(key) for c in columns]
        rows.append(
            f"| {key} | "
            + " | ".join("-" if v is None else f"{v:,.1f}".removesuffix(".0") for v in cells)
            + " |"
        )
    return "\n".join(rows)


def probe_table(probe: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    rows = ["| phase | status | answers | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for phase, statuses in probe.items():
        for status, row in statuses.items():
            rows.append(
                f"| {phase} | {status if status != '0' else 'no answer'} | {row['count']:,.0f} "
                f"| {row['p50_ms']:,.1f} | {row['p99_ms']:,.1f} | {row['max_ms']:,.1f} |"
            )
    return "\n".join(rows)


def missed_assertions(results: Mapping[str, Any]) -> list[Target]:
    return [t for t in targets(results) if t.step in ASSERTED and not t.figure_only and not t.met]


def markdown(results: Mapping[str, Any], charts: Iterable[str] = ()) -> str:
    meta = results.get("meta", {})
    nproc = int(meta.get("nproc", 1))
    steps = results.get("steps", {})
    found = targets(results)
    lines = [
        f"# Benchmark report ({meta.get('date', '?')})",
        "",
        f"Command: `{meta.get('command', 'make bench')}`"
        + (
            " (**--quick**: short runs, small VU counts; not the reference figures)"
            if meta.get("quick")
            else ""
        ),
        "",
        "Everything below ran in one session on one machine, load generator included, so the",
        "configurations compared side by side shared its noise. CPU is in cores (1.00 = one core",
        f"busy for the whole run; the machine has {nproc}), sampled from /proc per process;",
        "`other` is the rest of the machine meanwhile, `steal` the time the hypervisor ran other",
        "guests on its cores (a shared host's busy hour makes every process's CPU per request",
        "dearer). Pool waits and lookups come from each replica's /metrics (docs/metrics.md)",
        "before and during each run.",
        "",
        "## Targets",
        "",
        "| step | target | result | why (computed) |",
        "|---|---|---|---|",
    ]
    for t in found:
        name = f"{t.name} (a figure, not asserted)" if t.figure_only else t.name
        lines.append(f"| {t.step} | {name} | {t.describe()} | {why(t, results) or ''} |")
    if not found:
        lines.append("| - | no target could be evaluated | - | - |")
    met = sum(t.met for t in found)
    lines += ["", f"{met} of {len(found)} targets met.", ""]
    failures = results.get("failures", {})
    for name in STEPS:
        if name not in steps and name not in failures:
            continue
        lines += [f"## {TITLES[name]}", ""]
        step = steps.get(name, {})
        if step.get("how"):
            lines += [step["how"], ""]
        if name in failures:
            lines += [f"**This step failed**: `{failures[name]}`", ""]
        runs = step.get("runs", {})
        if runs:
            lines += [runs_table(runs), ""]
            cpu = cpu_table(runs, nproc)
            if cpu:
                lines += ["CPU (cores) per process and what the replicas reported:", "", cpu, ""]
        cluster = cluster_table(step) if name == "redis_cluster" else ""
        if cluster:
            lines += [
                "CPU per request of each tier (cores x wall time / requests; Redis: every "
                "process of the configuration summed), and the ratio of the cluster's figure "
                "to the single Redis's:",
                "",
                cluster,
                "",
            ]
        network = network_table(runs)
        if network:
            lines += [
                "What the network lost during each run (counters of the hosts' namespaces), "
                "and the most a real-time sleeper overslept meanwhile (bench/stall_probe.py):",
                "",
                network,
                "",
            ]
        tiers = tiers_table(step)
        if tiers:
            lines += [
                "Latency of surge's run at each tier (ms): the client (k6's summary), nginx "
                "(`$request_time`, its access log), the replica's part of it "
                "(`$upstream_response_time`), and the worst single second of each; CPU of "
                "the serving processes per request, and the most a real-time sleeper "
                "overslept meanwhile (bench/stall_probe.py: how long the machine itself kept "
                "a ready process waiting):",
                "",
                tiers,
                "",
            ]
        probe = step.get("probe", {})
        if probe:
            lines += ["The probe's lookups, each on a new connection:", "", probe_table(probe), ""]
        resources = step.get("resources", {})
        if resources:
            lines += [
                "Memory (MB), open file descriptors, event loop tasks and connections "
                "(bench/resources.py):",
                "",
                resources_table(resources),
                "",
            ]
        layers = step.get("layers", {})
        if layers:
            lines += ["Who answered the lookups (the replicas' counters over the run):", "",
                      "| layer | answers |", "|---|---|"]  # fmt: skip
            lines += [f"| {k} | {v} |" for k, v in layers.items()] + [""]
        for note in step.get("notes", []):
            lines += [note, ""]
    charts = list(charts)
    if charts:
        lines += ["## Charts", ""]
        lines += [f"![{Path(c).stem}]({c})" for c in charts]
        lines.append("")
    config = meta.get("config", {})
    if config:
        lines += ["## Configuration", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in config.items()]
        lines.append("")
    machine = meta.get("machine", [])
    if machine:
        lines += ["## Machine and versions", "", "| machine | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in machine]
        lines.append("")
    return "\n".join(lines)


# -- charts -----------------------------------------------------------------------------------


def _all_runs(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for name in STEPS:
        for label, run in results.get("steps", {}).get(name, {}).get("runs", {}).items():
            out.append((f"{name}: {label}", run))
    return out


def tiers_table(step: Mapping[str, Any]) -> str:
    """Client, nginx and upstream latency of a k6 step's surge run, and CPU per request per
    process kind, for each run of the step (floor, stack floor, bare handler, surge)."""
    runs = step.get("runs", {})
    surge = runs.get("k6") or runs.get("surge", {})  # netns_ramp names its run "surge"
    view = surge.get("tiers") or {}
    if not view:
        return ""
    series = view.get("series", [])
    worst = {
        "request": max((p["request_p99_ms"] for p in series), default=0.0),
        "upstream": max((p["upstream_p99_ms"] for p in series), default=0.0),
    }
    client = max((p.get("p99_ms", 0.0) for p in surge.get("client_series", [])), default=0.0)
    rows = [
        "| tier | p50 | p95 | p99 | max | worst second's p99 |",
        "|---|---|---|---|---|---|",
        f"| client (k6) | {surge['p50_ms']:.1f} | {surge['p95_ms']:.1f} | "
        f"{surge['p99_ms']:.1f} | {surge.get('max_ms', 0):.1f} | {client:.1f} |",
    ]
    for label, key in (("nginx `$request_time`", "request"), ("upstream", "upstream")):
        q = view.get(f"{key}_ms", {})
        rows.append(
            f"| {label} | {q.get('p50', 0):.1f} | {q.get('p95', 0):.1f} | {q.get('p99', 0):.1f}"
            f" | {q.get('max', 0):.1f} | {worst[key]:.1f} |"
        )
    rows += ["", "| run | " + " | ".join(f"{k} µs/request" for k in CPU_KINDS)
             + " | k6's peak memory | the machine's worst stall |",
             "|---" * (len(CPU_KINDS) + 3) + "|"]  # fmt: skip
    for name, run in runs.items():
        requests = run.get("requests") or 0
        if not requests:
            continue
        per_kind = dict.fromkeys(CPU_KINDS, 0.0)
        for proc, cores in run.get("cpu", {}).items():
            kind = "replicas" if process_kind(proc) in REPLICA_KINDS else process_kind(proc)
            if kind in per_kind:
                per_kind[kind] += cores * run.get("wall_s", 0.0) / requests * 1e6
        label = "surge" if name == "k6" else name
        rss = run.get("loadgen_rss_mb_max", 0)
        rows.append(
            f"| {label} | " + " | ".join(f"{v:.0f}" for v in per_kind.values())
            + f" | {rss:,} MB | {run.get('stall_ms_max', 0):.0f} ms |"
        )  # fmt: skip
    return "\n".join(rows)


CPU_KINDS = ("replicas", "nginx", "redis", "postgres", "k6")


def charts(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """PNG charts: req/s per configuration, latency percentiles, k6 timelines, CPU per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    runs = [(label, run) for label, run in _all_runs(results) if run.get("rps") is not None]

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    if runs:
        height = 1.5 + 0.35 * len(runs)
        fig, ax = plt.subplots(figsize=(9, height))
        labels = [label for label, _ in runs]
        ax.barh(labels, [run["rps"] for _, run in runs], color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("req/s")
        ax.set_title("Throughput per configuration")
        save(fig, "rps.png")

        lat = [(label, run) for label, run in runs if run.get("p99_ms") is not None]
        fig, ax = plt.subplots(figsize=(9, 1.5 + 0.45 * len(lat)))
        width = 0.27
        for i, (key, color) in enumerate(
            (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red"))
        ):
            ax.barh(
                [j + (i - 1) * width for j in range(len(lat))],
                [run.get(key) or 0 for _, run in lat],
                height=width,
                label=key.split("_")[0],
                color=color,
            )
        ax.set_yticks(range(len(lat)), [label for label, _ in lat])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_title("Latency percentiles per configuration")
        ax.legend()
        save(fig, "latency.png")

    timelines = [
        (name, results["steps"][name].get("timeline"))
        for name in ("ramp", "spike")
        if results.get("steps", {}).get(name, {}).get("timeline")
    ]
    if timelines:
        fig, axes = plt.subplots(len(timelines), 1, figsize=(9, 3.2 * len(timelines)))
        axes = axes if len(timelines) > 1 else [axes]
        for ax, (name, points) in zip(axes, timelines, strict=True):
            t = [p["t"] for p in points]
            ax.plot(t, [p["rps"] for p in points], color="tab:blue", label="req/s")
            ax.set_ylabel("req/s")
            ax.set_xlabel("seconds")
            ax2 = ax.twinx()
            ax2.plot(t, [p["p95_ms"] for p in points], color="tab:red", label="p95 ms (replicas)")
            ax2.plot(
                t, [p["vus"] / 10 for p in points], color="tab:gray", ls="--", label="VUs / 10"
            )
            ax2.set_ylabel("p95 ms, VUs / 10")
            ax.set_title(f"k6 {name}: per second (req/s and p95 from the replicas)")
            lines = ax.get_legend_handles_labels()
            lines2 = ax2.get_legend_handles_labels()
            ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
        save(fig, "k6-timeline.png")

    for name in ("ramp", "spike", "results_day"):
        step = results.get("steps", {}).get(name, {})
        surge = step.get("runs", {}).get("k6", {})
        per_second = (surge.get("tiers") or {}).get("series") or []
        cpu = surge.get("cpu_series") or []
        replicas = step.get("timeline") or []
        if not per_second and not cpu:
            continue
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=False)
        client = surge.get("client_series") or []
        for key, label in (("p99_ms", "client (k6) p99"), ("p95_ms", "client (k6) p95")):
            top.plot([p["t"] for p in client], [p.get(key, 0.0) for p in client], lw=1.6,
                     label=label)  # fmt: skip
        t = [p["t"] for p in per_second]
        for key, label, style in (
            ("request_p99_ms", "nginx $request_time p99", "-"),
            ("request_p95_ms", "nginx $request_time p95", "--"),
            ("upstream_p99_ms", "upstream (replica) p99", ":"),
        ):
            top.plot(t, [p[key] for p in per_second], ls=style, label=label)
        if replicas:
            top.plot([p["t"] for p in replicas], [p["p95_ms"] for p in replicas],
                     ls="-.", label="replicas' own p95")  # fmt: skip
        top.axhline(surge.get("p99_ms", 0), color="black", lw=0.8, label="client p99, whole run")
        top.set_yscale("symlog", linthresh=1)
        top.set_ylabel("ms")
        top.set_title(f"{name}: latency per second at each tier")
        top.legend(fontsize=7, loc="upper right")
        kinds: dict[str, list[float]] = {}
        for i, point in enumerate(cpu):
            for proc, cores in point.items():
                if proc != "t":
                    kinds.setdefault(process_kind(proc), [0.0] * len(cpu))[i] += cores
        ct = [p["t"] for p in cpu]
        if kinds:
            bottom.stackplot(ct, *kinds.values(), labels=list(kinds))
        bottom.set_ylabel("cores (1 s samples)")
        bottom.set_xlabel("seconds")
        bottom.set_title("CPU per process kind")
        bottom.legend(fontsize=7, loc="upper right")
        save(fig, f"tiers-{name}.png")

    series = results.get("steps", {}).get("soak", {}).get("series") or []
    if series:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        t = [point["t"] for point in series]
        ax2 = ax.twinx()
        for key in sorted({k for point in series for k in point}):
            values = [point.get(key) for point in series]
            if key.endswith("rss_mb") and not key.startswith("redis"):
                ax.plot(t, values, label=key)
            elif key.endswith("tasks"):
                ax2.plot(t, values, ls=":", label=key)
        ax.set_xlabel("seconds")
        ax.set_ylabel("resident memory, MB")
        ax2.set_ylabel("event loop tasks (dotted)")
        ax.set_ylim(bottom=0)
        ax2.set_ylim(bottom=0)
        ax.set_title("Soak: memory and tasks over time")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize="small")
        save(fig, "soak.png")

    cpu_runs = [(label, run["cpu"]) for label, run in _all_runs(results) if run.get("cpu")]
    if cpu_runs:
        ordered: list[str] = []
        for _, cpu in cpu_runs:
            for name in cpu:
                if process_kind(name) not in ordered:
                    ordered.append(process_kind(name))
        fig, ax = plt.subplots(figsize=(9, 1.5 + 0.35 * len(cpu_runs)))
        left = [0.0] * len(cpu_runs)
        for kind in ordered:
            values = [
                sum(v for n, v in cpu.items() if process_kind(n) == kind) for _, cpu in cpu_runs
            ]
            ax.barh([label for label, _ in cpu_runs], values, left=left, label=kind)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.axvline(int(results.get("meta", {}).get("nproc", 1)), color="black", ls=":")
        ax.set_xlabel("cores (dotted: all of the machine's)")
        ax.set_title("CPU per process")
        ax.legend(loc="lower right", fontsize="small")
        save(fig, "cpu.png")
    return written
