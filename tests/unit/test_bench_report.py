"""bench/report.py's pure half (bench/report_render.py): target evaluation, the saturation
verdict, markdown and charts, from fixed sample results. No load is generated here."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import report_render as rr


def run(rps: float, p50: float, p95: float, p99: float, errors: float = 0, **extra: Any) -> dict:
    return {"rps": rps, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "errors": errors,
            "requests": rps * 10, **extra}  # fmt: skip


def statuses(
    ok_rps: float,
    offered_rps: float,
    p99: float = 80,
    max_ms: float = 200,
    refused: int = 0,
    other: int = 0,
    socket_errors: int = 0,
    **extra: Any,
) -> dict:
    """A run of bench/statuses.lua over 10 s, as bench/report.py records it."""
    requests = offered_rps * 10
    non_2xx = requests - ok_rps * 10
    return {**run(ok_rps, 20, 60, p99), "requests": requests, "seconds": 10.0,
            "non_2xx": non_2xx, "socket_errors": socket_errors, "timeouts": 0,
            "max_ms": max_ms, "ok": ok_rps * 10, "expected_4xx": 0, "refused": refused,
            "refused_bare": 0, "other": other, **extra}  # fmt: skip


SAMPLE: dict[str, Any] = {
    "meta": {
        "date": "2026-11-23",
        "command": "make bench",
        "quick": False,
        "nproc": 2,
        "machine": [["nproc", "2"], ["Redis", "7.0.15"]],
        "config": {"replicas (default)": "2"},
    },
    "steps": {
        "fixed": {
            "how": "wrk -t1 -c256",
            "runs": {
                "surge": run(
                    5600, 30, 60, 90,
                    cpu={"nginx": 0.25, "api-1": 0.72, "api-2": 0.70, "redis": 0.12,
                         "postgres": 0.0, "wrk": 0.13, "other": 0.02},
                    store={"pool_waiting_max": 0, "store_errors": 0,
                           "lookups": {"redis_hit": 56000}},
                ),
                "bare handler": run(
                    5900, 28, 55, 80,
                    cpu={"nginx": 0.22, "bare-1": 0.71, "bare-2": 0.68, "redis": 0.15,
                         "wrk": 0.12, "other": 0.02},
                ),
            },
        },
        "ramp": {
            "runs": {"k6": run(1400, 20, 62.5, 90, wall_s=10,
                               cpu={"k6": 0.6, "api-1": 0.12, "api-2": 0.1, "nginx": 0.05})},
            "timeline": [{"t": t, "rps": 100 * t, "p95_ms": 10.0 + t, "vus": 50 * t}
                         for t in range(10)],
        },
        "spike": {"runs": {"k6": run(1500, 30, 300, 620, errors=3)}},
        "results_day": {
            "runs": {"k6": run(1200, 1, 4, 9, wall_s=10, cpu={"api-1": 0.2, "nginx": 0.07},
                               tiers={"requests": 12_000,
                                      "request_ms": {"p50": 0.5, "p95": 2, "p99": 5, "max": 30},
                                      "upstream_ms": {"p50": 0.4, "p95": 1, "p99": 3, "max": 9},
                                      "series": [{"t": 0, "requests": 1200, "request_p95_ms": 2,
                                                  "request_p99_ms": 5, "upstream_p95_ms": 1,
                                                  "upstream_p99_ms": 3}]},
                               cpu_series=[{"t": 1.0, "api-1": 0.2, "nginx": 0.07, "k6": 0.5}])},
            "layers": {"local_hit": "11,000 (97.0%)", "not_found": "340 (3.0%)"},
        },
        "cold": {
            "runs": {
                "warm": run(6000, 20, 40, 60),
                "cold pass": run(1800, 90, 200, 300, cpu={"postgres": 0.9, "api-1": 0.5},
                                 store={"pool_waiting_max": 12, "store_errors": 0,
                                        "lookups": {"fallback_hit": 3000}}),
                "second pass": run(5800, 21, 41, 62),
            }
        },
        "replicas": {"runs": {"1 replica": run(4000, 30, 50, 70),
                              "2 replicas": run(5600, 30, 60, 90)}},
        "metrics": {"runs": {"metrics on": run(3900, 15, 40, 60),
                             "metrics off": run(4000, 15, 40, 60)}},
        "capacity_figures": {
            "how": "three replicas of its own",
            "runs": {"copy": run(1600, 0.3, 1, 2, wall_s=10, cpu={"api-1": 0.26, "wrk": 0.07})},
            "notes": ["| figure | value | how |\n|---|---|---|\n| hit_per_core | 6,153.8 /s per "
                      "core | copy, paced |"],
        },
        "redis_cluster": {
            "runs": {
                "single Redis": run(3000, 20, 30, 40, wall_s=10,
                                    cpu={"api-1": 0.90, "redis": 0.03, "wrk": 0.1},
                                    store={"lookups": {"redis_hit": 30000}}),
                "Redis Cluster (3 masters + 3 replicas)": run(
                    2400, 25, 40, 60, errors=2, wall_s=10,
                    cpu={"api-1": 0.90, "redis-m1": 0.02, "redis-m2": 0.02, "redis-m3": 0.02,
                         "redis-r1": 0.01, "redis-r2": 0.01, "redis-r3": 0.01, "wrk": 0.1},
                    store={"lookups": {"redis_hit": 23990, "fallback_hit": 10}},
                ),
            },
            "redis_idle_cores": {
                "single Redis": {"redis": 0.0},
                "Redis Cluster (3 masters + 3 replicas)": {
                    "redis-m1": 0.004, "redis-m2": 0.004, "redis-m3": 0.004,
                    "redis-r1": 0.004, "redis-r2": 0.004, "redis-r3": 0.004,
                },
            },
        },
        "netns_ramp": {
            "runs": {
                "surge": run(1500, 3, 6, 12, wall_s=60,
                             cpu={"nginx": 0.2, "api-1": 0.4, "api-2": 0.4, "netdelay": 0.3,
                                  "k6": 0.3}),
                "floor": run(1500, 2, 4, 8, wall_s=60, cpu={"nginx": 0.1, "k6": 0.3}),
            },
        },
        "overload": {
            "runs": {
                "capacity": statuses(7000, 7000),
                "3x capacity": statuses(5000, 24000, p99=180, max_ms=400, refused=190000),
                "recovery": statuses(6900, 6900),
            },
            "resources": {
                "capacity": {"api-1 rss_mb": 100.0, "nginx rss_mb": 30.0, "api-1 tasks": 200},
                "3x capacity": {"api-1 rss_mb": 101.0, "nginx rss_mb": 36.0, "api-1 tasks": 180},
                "recovery": {"api-1 rss_mb": 101.0, "nginx rss_mb": 31.0, "api-1 tasks": 190},
            },
            "probe": {
                "3x capacity": {
                    "200": {"count": 130, "p50_ms": 60.0, "p99_ms": 150.0, "max_ms": 210.0},
                    "503": {"count": 70, "p50_ms": 8.0, "p99_ms": 60.0, "max_ms": 60.0},
                },
            },
        },
        "redis_empty": {
            "runs": {"copy on": statuses(3500, 3500), "copy off": statuses(3100, 3100)},
            "figures": {
                "copy on": {"failed": 0.0, "served_without_postgres_90_s": 0.0,
                            "whole_again_s": 24.0, "lowest_rate_vs_load": 0.95},
                "copy off": {"failed": 0.0, "served_without_postgres_90_s": 26.0,
                             "whole_again_s": None, "lowest_rate_vs_load": 0.2},
            },
            "notes": ["| t | lookups/s |\n|---|---|\n| 1 | 3,500 |"],
        },
        "postgres_gone": {
            "runs": {"cached lookups": statuses(3500, 3500)},
            "figures": {"postgres gone": {
                "cached_failed": 0.0, "misses_during": 590.0, "misses_not_a_proper_503": 0.0,
                "slowest_503_ms": 520.0, "full_service_s": 0.8,
                "api-1 rss_mb before (median)": 100.0, "api-1 rss_mb during (max)": 104.0,
                "api-1 rss_mb after (median)": 101.0, "api-1 tasks before (min)": 40.0,
                "api-1 tasks during (max)": 90.0, "api-1 tasks after (min)": 52.0,
            }},
        },
        "unknown_flood": {
            "runs": {"known ids": statuses(7000, 7000), "unknown ids": statuses(0, 7200)},
            "figures": {"flood": {
                "postgres_asked_known": 0.0, "postgres_asked_unknown": 0.0,
                "answers_vs_known": 1.03, "probe_p99_known_ms": 8.0, "probe_p99_flood_ms": 11.0,
            }},
        },
        "soak": {
            "runs": {"soak": statuses(3000, 3400, capacity_rps=7000)},
            "resources": {
                "baseline median": {"api-1 rss_mb": 96.0, "api-2 rss_mb": 96.0, "api-1 tasks": 14},
                "final median": {"api-1 rss_mb": 96.5, "api-2 rss_mb": 102.0, "api-1 tasks": 30},
                "baseline min": {"api-1 rss_mb": 95.0, "api-2 rss_mb": 95.0, "api-1 tasks": 12,
                                 "api-1 fds": 190, "redis clients": 517},
                "final min": {"api-1 rss_mb": 96.0, "api-2 rss_mb": 101.0, "api-1 tasks": 15,
                              "api-1 fds": 191, "redis clients": 517},
            },
            "series": [{"t": t, "api-1 rss_mb": 96.0 + t / 100, "api-1 tasks": 12}
                       for t in range(0, 600, 5)],
        },
    },
    "failures": {"replicas": "RuntimeError: stack up failed"},
}  # fmt: skip


def by_name(results: dict) -> dict[tuple[str, str], rr.Target]:
    return {(t.step, t.name): t for t in rr.targets(results)}


def test_targets_met_and_missed_by_how_much() -> None:
    found = by_name(SAMPLE)
    fixed = found[("fixed", "surge req/s ≥ 1.3 x the bare handler's")]
    assert not fixed.met
    assert fixed.gap == pytest.approx(1.3 * 5900 - 5600)
    assert fixed.gap_ratio == pytest.approx((1.3 * 5900 - 5600) / (1.3 * 5900))
    assert found[("fixed", "surge errors")].met

    p95 = found[("ramp", "p95")]
    assert not p95.met and p95.gap == pytest.approx(42.5)
    assert "missed by 42.5 ms (212% of the goal)" in p95.describe()
    assert found[("ramp", "p99")].met
    assert found[("ramp", "failed requests")].met

    assert ("spike", "p95") not in found  # the spike's contract is p99 and failures only
    assert not found[("spike", "failed requests")].met
    assert found[("spike", "p99")].gap == pytest.approx(520)
    # (0.12 + 0.1 + 0.05) cores x 10 s / 14,000 requests; k6's own CPU is not the server's
    cpu = found[("ramp", "server CPU per request (replicas, nginx, Redis, Postgres)")]
    assert cpu.measured == pytest.approx(0.27 * 10 / 14_000 * 1e6) and cpu.met

    cold = found[("cold", "cold pass / warm rate")]
    assert not cold.met and cold.measured == pytest.approx(0.30)
    second = found[("cold", "second pass / warm rate")]
    assert second.met and second.measured == pytest.approx(5800 / 6000)

    cost = found[("metrics", "req/s cost of metrics")]
    assert cost.measured == pytest.approx(0.025) and cost.met


def test_overload_targets() -> None:
    found = by_name(SAMPLE)
    assert found[("overload", "offered load / capacity")].measured == pytest.approx(24000 / 7000)
    assert found[("overload", "200/s at 3x / capacity")].measured == pytest.approx(5000 / 7000)
    memory = found[("overload", "memory at 3x vs at capacity (worst: nginx)")]
    assert memory.measured == pytest.approx(0.20) and not memory.met  # 30 -> 36 MB
    assert found[("overload", "recovery: 200/s / capacity")].measured == pytest.approx(6900 / 7000)
    for name in (
        "answers at 3x: not 200, no Retry-After, or none",
        "slowest answer at 3x",
        "recovery: answers other than 200",
        "a newcomer's 503 at 3x, p99",
        "a newcomer's lookups at 3x without an answer",
    ):
        assert found[("overload", name)].met, name
    results = copy.deepcopy(SAMPLE)
    over = results["steps"]["overload"]["runs"]["3x capacity"]
    over.update(other=3, socket_errors=2, max_ms=5000.0)
    results["steps"]["overload"]["probe"]["3x capacity"]["0"] = {
        "count": 2,
        "p50_ms": 10000.0,
        "p99_ms": 10000.0,
        "max_ms": 10000.0,
    }
    found = by_name(results)
    assert found[("overload", "a newcomer's lookups at 3x without an answer")].measured == 2
    assert found[("overload", "answers at 3x: not 200, no Retry-After, or none")].measured == 5
    assert not found[("overload", "slowest answer at 3x")].met


def test_soak_targets() -> None:
    found = by_name(SAMPLE)
    assert found[("soak", "failed requests")].met
    assert found[("soak", "offered load / capacity")].measured == pytest.approx(3400 / 7000)
    memory = found[("soak", "replica memory growth, median (worst: api-2)")]
    assert memory.measured == pytest.approx(6 / 96) and not memory.met
    tasks = found[("soak", "api-1 tasks at the end - baseline (minimum)")]  # by the floor
    assert tasks.measured == 3 and tasks.goal == 2 and not tasks.met
    assert found[("soak", "api-1 fds at the end - baseline (minimum)")].met  # +1 of 19 allowed
    assert found[("soak", "redis clients at the end - baseline (minimum)")].met


def test_recovery_targets() -> None:
    found = by_name(SAMPLE)
    assert found[("redis_empty", "copy on: lowest second's lookups / the load before")].met
    # without copies every lookup reads Postgres until the refill: figures, not assertions
    assert found[("redis_empty", "copy off: lowest second's lookups / the load before")].figure_only
    never = found[("redis_empty", "copy off: Redis whole again after")]
    assert never.measured == float("inf") and not never.met and "never" in never.describe()
    assert found[("postgres_gone", "slowest 503")].met
    assert found[("postgres_gone", "full service after its return")].met
    assert found[("postgres_gone", "api-1 memory after vs before")].measured == pytest.approx(0.01)
    tasks = found[("postgres_gone", "api-1 tasks after - before (floors)")]
    assert tasks.measured == 12 and tasks.goal == 4 and not tasks.met  # during may rise; after not
    assert found[("unknown_flood", "lookups that asked Postgres during the flood")].met
    probe = found[("unknown_flood", "a newcomer's known-id p99 during the flood")]
    assert probe.goal == 12.0 and probe.met  # 1.5 x 8 ms


def test_redis_cluster_is_figures_with_honest_targets_only() -> None:
    found = by_name(SAMPLE)
    assert found[("redis_cluster", "single Redis: errors")].met
    assert found[("redis_cluster", "single Redis: lookups not answered by Redis")].met
    assert not found[("redis_cluster", "Redis Cluster: errors")].met
    assert found[("redis_cluster", "Redis Cluster: lookups not answered by Redis")].measured == 10
    assert "redis_cluster" not in rr.ASSERTED  # a figure step: never fails the bench
    table = rr.cluster_table(SAMPLE["steps"]["redis_cluster"])
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ")[1:] for r in table.splitlines()}
    # replica 0.90 x 10 s / 30,000 = 300 µs; Redis 0.03 x 10 / 30,000 = 10 µs
    assert rows["single Redis"][:8] == ["3,000", "20.0", "40.0", "300.0", "10.0", "0.0",
                                        "310.0", "0.000"]  # fmt: skip
    # the cluster's six summed: 0.09 x 10 / 24,000 = 37.5 µs; idle 0.024 cores = 10 µs of it
    cluster = rows["Redis Cluster (3 masters + 3 replicas)"]
    assert cluster[4] == "37.5" and cluster[7] == "0.024" and cluster[8].startswith("27.5")
    assert rows["cluster / single"][:2] == ["0.80x", "1.25x"]


def test_only_assertion_steps_can_fail_the_bench() -> None:
    missed = {(t.step, t.name) for t in rr.missed_assertions(SAMPLE)}
    assert missed == {
        ("postgres_gone", "api-1 tasks after - before (floors)"),
        ("overload", "memory at 3x vs at capacity (worst: nginx)"),
        ("soak", "replica memory growth, median (worst: api-2)"),
        ("soak", "api-1 tasks at the end - baseline (minimum)"),
    }  # the missed ramp, spike, fixed and cold targets are figures, not assertions


def test_cold_pass_is_measured_against_forty_percent_of_warm() -> None:
    target = by_name(SAMPLE)[("cold", "cold pass / warm rate")]  # 1,800 of 6,000: 30%
    assert target.gap == pytest.approx(0.10)
    assert "missed by 10.0 points**: 30.0% (≥ 40.0%)" in target.describe()
    results = copy.deepcopy(SAMPLE)
    results["steps"]["cold"]["runs"]["cold pass"]["rps"] = 3000
    target = by_name(results)[("cold", "cold pass / warm rate")]
    assert target.met and target.gap == 0
    assert target.describe() == "met: 50.0% (≥ 40.0%)"


def test_only_the_steps_that_ran_are_evaluated() -> None:
    results = {"meta": {"nproc": 2}, "steps": {"metrics": SAMPLE["steps"]["metrics"]}}
    assert [t.step for t in rr.targets(results)] == ["metrics"]
    assert rr.targets({"steps": {}}) == []


def test_saturation_verdicts() -> None:
    hot = {"cpu": {"nginx": 0.95, "api-1": 0.5, "redis": 0.1}}
    assert rr.saturation(hot, 2).startswith("nginx saturated its core")
    machine = {"cpu": {"api-1": 0.7, "api-2": 0.7, "postgres": 0.5}}
    assert "machine's 2 cores were saturated" in rr.saturation(machine, 2)
    idle = {"cpu": {"api-1": 0.2, "k6": 0.3}}
    assert rr.saturation(idle, 2).startswith("no tier saturated")
    pool = {"cpu": {"api-1": 0.2}, "store": {"pool_waiting_max": 12, "store_errors": 4}}
    verdict = rr.saturation(pool, 2)
    assert "Postgres pool" in verdict and "4 failed store calls" in verdict
    assert rr.saturation({}, 2) == "no CPU samples"


def test_steal_is_the_machines_share_not_the_busiest_tier() -> None:
    stolen = {"cpu": {"api-1": 0.6, "nginx": 0.3, "other": 0.4, "steal": 0.9}}
    verdict = rr.saturation(stolen, 2)
    assert "the largest share: api-1 (0.60 cores)" in verdict
    assert "the hypervisor took 0.90 cores (steal)" in verdict
    assert "steal" not in rr.saturation({"cpu": {"api-1": 0.2, "steal": 0.05}}, 2)


def test_why_is_computed_for_a_missed_target() -> None:
    fixed = by_name(SAMPLE)[("fixed", "surge req/s ≥ 1.3 x the bare handler's")]
    reason = rr.why(fixed, SAMPLE)
    assert "machine's 2 cores were saturated" in reason
    assert "µs of CPU per request" in reason
    assert rr.why(by_name(SAMPLE)[("fixed", "surge errors")], SAMPLE) == ""


def test_a_latency_miss_compares_with_the_replicas_own_p95() -> None:
    p95 = by_name(SAMPLE)[("ramp", "p95")]
    assert not p95.met
    assert "the replicas' own p95 stayed ≤ 19.0 ms" in rr.why(p95, SAMPLE)


def test_markdown_has_targets_steps_failures_and_machine() -> None:
    text = rr.markdown(SAMPLE, ["2026-11-23/rps.png"])
    assert text.startswith("# Benchmark report (2026-11-23)")
    assert "| ramp | p95 | **missed by 42.5 ms" in text
    for title in rr.TITLES.values():
        assert f"## {title}" in text
    assert "**This step failed**: `RuntimeError: stack up failed`" in text
    assert "![rps](2026-11-23/rps.png)" in text
    assert "| Redis | 7.0.15 |" in text
    assert "| surge | **5,600** |" in text
    met = sum(t.met for t in rr.targets(SAMPLE))
    assert f"{met} of {len(rr.targets(SAMPLE))} targets met." in text
    # every table row has as many cells as its header
    for block in text.split("\n\n"):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        if rows:
            assert len({r.count(" | ") for r in rows if not r.startswith("|---")}) == 1, block


def test_quick_runs_are_labelled() -> None:
    results = copy.deepcopy(SAMPLE)
    results["meta"]["quick"] = True
    assert "**--quick**" in rr.markdown(results)


def test_charts_are_written_as_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = rr.charts(json.loads(json.dumps(SAMPLE)), tmp_path)
    assert {p.name for p in written} == {
        "rps.png",
        "latency.png",
        "k6-timeline.png",
        "soak.png",
        "tiers-results_day.png",
        "cpu.png",
    }
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000


def test_charts_of_empty_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert rr.charts({"steps": {}}, tmp_path) == []


def test_histogram_quantile_interpolates_like_promql() -> None:
    inf = float("inf")
    buckets = {0.001: 50.0, 0.005: 90.0, 0.01: 100.0, inf: 100.0}
    assert rr.histogram_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert rr.histogram_quantile(buckets, 0.7) == pytest.approx(0.001 + 0.004 * 20 / 40)
    assert rr.histogram_quantile(buckets, 0.95) == pytest.approx(0.005 + 0.005 * 0.5)
    assert rr.histogram_quantile({0.01: 0.0, inf: 0.0}, 0.95) == 0.0
    assert rr.histogram_quantile({0.01: 1.0, inf: 10.0}, 0.95) == pytest.approx(0.01)


def test_cpu_chart_stacks_each_kind_of_process_once(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    seen: list[str] = []
    original = plt.Axes.barh

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.get_title() == "" and "label" in kwargs and "left" in kwargs:
            seen.append(kwargs["label"])
        return original(self, *args, **kwargs)

    plt.Axes.barh = spy  # type: ignore[method-assign]
    try:
        rr.charts(json.loads(json.dumps(SAMPLE)), tmp_path)
    finally:
        plt.Axes.barh = original  # type: ignore[method-assign]
    assert sorted(seen) == sorted(set(seen))
    assert {"api", "bare", "nginx", "k6"} <= set(seen)


def test_a_cpu_miss_is_set_against_the_stack_floor_of_the_same_run() -> None:
    results = copy.deepcopy(SAMPLE)
    ramp = results["steps"]["ramp"]["runs"]
    # surge: 0.3 cores for 10 s over 10,000 requests = 300 µs; the stack floor: 180 µs
    ramp["k6"] = run(1000, 2, 5, 9, wall_s=10, cpu={"api-1": 0.2, "nginx": 0.08, "redis": 0.02})
    ramp[rr.STACK_FLOOR] = run(1000, 1, 3, 6, wall_s=10, cpu={"granian-1": 0.12, "nginx": 0.06})
    cpu = by_name(results)[("ramp", "server CPU per request (replicas, nginx, Redis, Postgres)")]
    assert not cpu.met and cpu.measured == pytest.approx(300)
    reason = rr.why(cpu, results)
    assert "cost 180 µs per request (Granian 120, nginx 60): 90% of the goal" in reason
    assert (
        "surge's own work on top: 120 µs (replicas 80, nginx 20, Redis and Postgres 20)" in reason
    )
    assert "steal" not in reason  # these runs did not record it
    ramp["k6"]["cpu"]["steal"], ramp[rr.STACK_FLOOR]["cpu"]["steal"] = 0.25, 0.05
    reason = rr.why(cpu, results)
    assert "the hypervisor took 0.05 cores (steal) during the stack floor's run, 0.25" in reason


def test_an_offered_load_miss_is_set_against_what_the_floor_answered() -> None:
    results = copy.deepcopy(SAMPLE)
    step = results["steps"]["overload"]
    step["runs"]["3x capacity"].update(requests=9000 * 10)  # 9,000/s offered: 1.29x of 7,000
    step["runs"]["capacity"]["cpu"] = {"api-1": 0.9, "nginx": 0.6, "wrk": 0.4, "other": 0.05}
    step["floor"] = statuses(39000, 39000, cpu={"nginx": 1.0, "wrk": 0.95})  # 50 µs each
    offered = by_name(results)[("overload", "offered load / capacity")]
    assert not offered.met
    # 5,000 200/s at 1.95 cores / 7,000 = 279 µs each: 1.39 cores; 0.61 left / 50 µs = 12,143
    assert "at most 17,143 req/s, 2.45x the capacity" in rr.why(offered, results)
    assert "39,000 answers/s at 50 µs of CPU each" in rr.why(offered, results)
    # the machine could not offer 3x (17,143 < 21,000): a figure, and the bench does not fail
    assert offered.figure_only
    missed = {(t.step, t.name) for t in rr.missed_assertions(results)}
    assert ("overload", "offered load / capacity") not in missed
    # a floor that could have offered it keeps the assertion
    step["floor"] = statuses(150000, 150000, cpu={"nginx": 1.0, "wrk": 0.95})
    assert not by_name(results)[("overload", "offered load / capacity")].figure_only


def test_netns_ramp_asserts_no_failed_request_on_surge_only() -> None:
    floor_failed = {"runs": {"surge": run(1500, 3, 6, 12), "floor": run(1500, 2, 4, 8, errors=3)}}
    assert rr.missed_assertions({"steps": {"netns_ramp": floor_failed}}) == []
    surge_failed = {"runs": {"surge": run(1500, 3, 6, 12, errors=1), "floor": run(1500, 2, 4, 8)}}
    missed = rr.missed_assertions({"steps": {"netns_ramp": surge_failed}})
    assert [(t.step, t.name, t.measured) for t in missed] == [
        ("netns_ramp", "surge: failed requests", 1)
    ]


def test_a_count_may_grow_by_a_tenth_rounded_up_to_a_whole_count_at_least_two() -> None:
    assert rr.count_allowance(0) == 2
    assert rr.count_allowance(28) == 3  # 2.8 tasks: a count moves in whole steps
    assert rr.count_allowance(31) == 4


def test_a_latency_miss_shows_the_machines_own_stalls_in_the_slow_seconds() -> None:
    run = {
        "client_series": [{"t": t, "p99_ms": 150.0 if t == 5 else 4.0} for t in range(10)],
        "stall_series": [{"t": t + 0.4, "stall_ms": 90.0 if t == 5 else 3.0} for t in range(10)],
    }
    said = rr.machine_stalls(run, 100.0)
    assert "up to 90 ms in the 1 second(s)" in said and "3 ms in the rest" in said
    assert rr.machine_stalls({**run, "client_series": []}, 100.0) == ""


def test_the_tasks_floor_is_of_all_replicas_together_so_moving_load_is_no_leak() -> None:
    from types import SimpleNamespace

    from bench.recovery import tasks_floor

    samples = [
        {"t": 1.0, "api-1 tasks": 12.0, "api-2 tasks": 24.0, "api-1 rss_mb": 99.0},
        {"t": 2.0, "api-1 tasks": 21.0, "api-2 tasks": 10.0, "api-1 rss_mb": 99.0},
        {"t": 9.0, "api-1 tasks": 1.0, "api-2 tasks": 1.0, "api-1 rss_mb": 99.0},
    ]
    res = SimpleNamespace(samples=samples)
    assert tasks_floor(res, 0, 5) == 31.0  # type: ignore[arg-type]
    assert tasks_floor(res, 20, 30) == 0.0  # type: ignore[arg-type]


def test_netns_ramp_shows_each_tier_of_its_surge_run() -> None:
    """netns_ramp names its run "surge" (not "k6"): its nginx and client views still show."""
    surge = run(1500, 3, 225, 466, wall_s=60, cpu={"nginx": 0.1, "api-1": 0.25, "k6": 0.6})
    surge["tiers"] = {
        "request_ms": {"p50": 1.0, "p95": 4.0, "p99": 9.0, "max": 30.0},
        "upstream_ms": {"p50": 1.0, "p95": 3.0, "p99": 8.0, "max": 29.0},
        "series": [{"t": 0, "request_p99_ms": 9.0, "upstream_p99_ms": 8.0}],
    }
    surge["client_series"] = [{"t": 0, "p95_ms": 225.0, "p99_ms": 480.0}]
    table = rr.tiers_table({"runs": {"surge": surge, "floor": run(1500, 2, 4, 8, wall_s=60)}})
    assert "| client (k6) | 3.0 | 225.0 | 466.0 | 0.0 | 480.0 |" in table
    assert "| nginx `$request_time` | 1.0 | 4.0 | 9.0 | 30.0 | 9.0 |" in table
