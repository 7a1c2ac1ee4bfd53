"""`make capacity` (bench/capacity.py): the plan's arithmetic on fixed figures, the figures read
from the real checked-in benchmark results, the worked examples of docs/capacity.md, and the
figures bench/capacity_figures.py hands over. No load is generated here."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import capacity as cap  # noqa: E402
from bench import capacity_figures  # noqa: E402

REPORT = ROOT / "docs/benchmarks/2026-12-01/results.json"
DOC = ROOT / "docs/capacity.md"
MIB, GIB = 2**20, 2**30


def fig(value: float) -> cap.Figure:
    return cap.Figure(value, "", "fixed")


# Round figures, so that every plan below can be worked out by hand.
FIXED = cap.Figures(
    date="2026-01-01",
    machine="test",
    path="fixed",
    hit_per_core=fig(5_000),
    redis_path_per_core=fig(2_500),
    fallback_per_core=fig(1_000),
    nginx_per_core=fig(10_000),
    redis_ops_per_core=fig(20_000),
    postgres_per_core=fig(4_000),
    fallbacks_per_connection=fig(100),
    pool_max=fig(8),
    redis_bytes_students=fig(500),
    redis_bytes_bookings=fig(1_000),
    copy_bytes_students=fig(600),
    copy_bytes_bookings=fig(1_200),
    replica_base_bytes=fig(100 * MIB),
)
DEMAND = cap.Demand(students=1_000_000, peak_rps=10_000)


def test_known_figures_give_known_replicas_memory_and_nodes() -> None:
    p = cap.plan(DEMAND, FIXED)
    assert p.load_rps == 15_000  # 10,000/s x 1.5
    # 15,000 x (0.99 / 5,000 + 0.01 / 1,000) = 2.97 + 0.15 cores
    assert p.replica_cores == pytest.approx(3.12)
    assert p.replicas == 4 and p.replica_nodes == 1
    assert p.cold_copy_cores == pytest.approx(15_000 * (0.99 / 2_500 + 0.01 / 1_000))
    assert p.nginx_cores == pytest.approx(1.5) and p.nginx_workers == 2 and p.nginx_nodes == 1
    assert p.copy_bytes == 600e6
    assert p.local_cache_mb == math.ceil(600e6 * 1.5 / MIB) == 859
    assert p.replica_memory_bytes == pytest.approx((100 * MIB + 600e6) * 1.5)
    assert p.redis_bytes == 2 * 500e6 * 1.5  # two versions during a reseed
    assert p.redis_ops == pytest.approx(15_150)  # a HGET each, a write-back per fallback
    assert (p.redis_masters_for_memory, p.redis_masters_for_ops) == (1, 1)
    assert not p.cluster and p.redis_masters == 1 and p.redis_nodes == 1
    assert p.fallback_rps == pytest.approx(150)
    assert p.pg_connections_needed == 2 and p.pg_pool_max == 8 and p.pg_connections == 32
    assert p.postgres_cores == pytest.approx(150 / 4_000)


def test_headroom_is_applied_to_every_tier() -> None:
    none = cap.plan(dataclasses.replace(DEMAND, headroom=0.0), FIXED)
    double = cap.plan(dataclasses.replace(DEMAND, headroom=1.0), FIXED)
    assert none.load_rps == 10_000 and double.load_rps == 20_000
    assert none.replica_cores == pytest.approx(2.08) and none.replicas == 3
    assert double.replica_cores == pytest.approx(2 * none.replica_cores)
    assert double.replicas == 5
    assert double.nginx_cores == pytest.approx(2 * none.nginx_cores)
    assert double.redis_bytes == pytest.approx(2 * none.redis_bytes)
    assert double.fallback_rps == pytest.approx(2 * none.fallback_rps)
    assert double.local_cache_mb == math.ceil(600e6 * 2 / MIB)
    text = cap.plan(DEMAND, FIXED).render()
    assert "headroom 50%: every tier sized for 15,000/s (1.5 x the peak)" in text
    assert "at most 67% busy at the peak" in text


def test_never_fewer_than_two_replicas() -> None:
    p = cap.plan(cap.Demand(students=100, peak_rps=1), FIXED)
    assert p.replica_cores < 0.01 and p.replicas == cap.MIN_REPLICAS == 2
    assert p.pg_connections == 2 * 8


def test_a_cluster_when_one_nodes_memory_is_exceeded() -> None:
    # 2 versions x 1,000,000 x 500 B x 1.5 = 1.5e9 B: one 3 GiB node holds it
    assert not cap.plan(DEMAND, FIXED).cluster
    # exactly full: still one node
    full = dataclasses.replace(DEMAND, redis_node_gb=1.5e9 / GIB)
    assert cap.plan(full, FIXED).redis_masters_for_memory == 1
    assert not cap.plan(full, FIXED).cluster
    # a 1 GiB node: two would hold it; a cluster, of Redis Cluster's minimum of three masters
    small = cap.plan(dataclasses.replace(DEMAND, redis_node_gb=1), FIXED)
    assert small.redis_masters_for_memory == 2 and small.redis_masters_for_ops == 1
    assert small.cluster and small.redis_masters == 3 and small.redis_nodes == 6
    assert "a Redis Cluster: 3 masters + 3 replicas (6 nodes)" in small.render()
    # 10,000,000 students: 15e9 B, five 3 GiB nodes
    many = cap.plan(dataclasses.replace(DEMAND, students=10_000_000), FIXED)
    assert many.redis_masters_for_memory == math.ceil(15e9 / (3 * GIB)) == 5
    assert many.redis_masters == 5 and many.redis_nodes == 10


def test_a_cluster_when_one_nodes_ops_are_exceeded() -> None:
    # 20,000/s x 1.5 x 1.01 = 30,300 HGETs/s against 20,000 a node
    busy = cap.plan(dataclasses.replace(DEMAND, peak_rps=20_000), FIXED)
    assert busy.redis_masters_for_memory == 1 and busy.redis_masters_for_ops == 2
    assert busy.cluster and busy.redis_masters == 3
    calm = cap.plan(dataclasses.replace(DEMAND, peak_rps=13_000), FIXED)  # 19,695/s
    assert calm.redis_masters_for_ops == 1 and not calm.cluster
    assert "1 node, no cluster" in calm.render()


def test_bookings_count_with_their_own_bytes() -> None:
    p = cap.plan(dataclasses.replace(DEMAND, students=0, bookings=1_000_000), FIXED)
    assert p.copy_bytes == 1_200e6 and p.redis_bytes == 2 * 1_000e6 * 1.5


def test_postgres_pool_grows_when_the_fallback_rate_needs_it() -> None:
    everything = cap.plan(dataclasses.replace(DEMAND, fallback_share=1.0), FIXED)
    assert everything.fallback_rps == 15_000
    assert everything.replica_cores == pytest.approx(15.0) and everything.replicas == 15
    assert everything.pg_connections_needed == 150
    assert everything.pg_pool_max == 10 and everything.pg_connections == 150  # ceil(150 / 15)
    assert everything.redis_ops == pytest.approx(30_000)
    assert "above Postgres's default" in everything.render()
    assert "above Postgres's default" not in cap.plan(DEMAND, FIXED).render()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"students": -1}, "must not be negative"),
        ({"students": 0}, "no records"),
        ({"peak_rps": 0}, "PEAK_RPS must be above 0"),
        ({"peak_rps": float("nan")}, "PEAK_RPS must be above 0"),
        ({"headroom": -0.1}, "HEADROOM must be between 0% and 1000%"),
        ({"fallback_share": 1.5}, "FALLBACK_SHARE must be between 0% and 100%, not 150%"),
        ({"cores_per_node": 0}, "CORES_PER_NODE must be at least 1"),
        ({"redis_node_gb": 0}, "REDIS_NODE_GB must be above 0"),
    ],
)
def test_invalid_inputs_are_refused_with_a_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(cap.PlanError, match=re.escape(message)):
        cap.plan(dataclasses.replace(DEMAND, **change), FIXED)


def test_a_figure_that_is_not_positive_is_refused() -> None:
    broken = dataclasses.replace(FIXED, fallbacks_per_connection=cap.Figure(0, "", "cold pass"))
    with pytest.raises(cap.PlanError, match="fallbacks_per_connection is 0: cold pass"):
        cap.plan(DEMAND, broken)


def test_the_command_line_refuses_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--results", str(REPORT), "--students", "1000"]
    assert cap.main([*args, "--peak-rps", "0"]) == 2
    assert "capacity: PEAK_RPS must be above 0" in capsys.readouterr().err
    for bad in (["--headroom", "50"], ["--students", "many"], ["--fallback-share", "x%"]):
        with pytest.raises(SystemExit) as exit_:
            cap.main([*args, "--peak-rps", "10", *bad])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "a fraction (0.5) or a percentage (50%)" in err and "'many' is not a whole number" in err
    assert cap.main([*args, "--peak-rps", "10", "--headroom", "25%", "--bookings", "1_000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("capacity plan: 1,000 students + 1,000 bookings, peak 10 lookups/s")
    assert "headroom 25%" in out


# -- the real checked-in results --------------------------------------------------------------


def test_the_newest_full_report_is_found(tmp_path: Path) -> None:
    newest = cap.newest_results()
    full = sorted(
        p.parent.name
        for p in (ROOT / "docs/benchmarks").glob("*/results.json")
        if not json.loads(p.read_text())["meta"].get("quick")
    )
    assert newest.parent.name == full[-1] >= REPORT.parent.name and newest.name == "results.json"
    # a newer --quick run, and a newer --only run lacking steps, are passed over
    full = json.loads(REPORT.read_text())
    for date, results in (
        ("2026-12-01", full),
        ("2026-12-05", {**full, "meta": {**full["meta"], "quick": True}}),
        ("2026-12-09", {**full, "steps": {"metrics": full["steps"]["metrics"]}}),
        ("not-a-date", full),
    ):
        (tmp_path / date).mkdir()
        (tmp_path / date / "results.json").write_text(json.dumps(results))
    assert cap.newest_results(tmp_path) == tmp_path / "2026-12-01/results.json"
    with pytest.raises(cap.PlanError, match="holds every figure"):
        cap.newest_results(tmp_path / "2026-12-09")


def test_figures_are_read_from_the_checked_in_report() -> None:
    results = json.loads(REPORT.read_text())
    f = cap.figures(results, "r.json")
    assert f.date == "2026-12-01" and f.path == "r.json"
    assert f.machine == "Intel(R) Xeon(R) Processor, 2 cores, 23.5 GiB"
    ramp = results["steps"]["ramp"]["runs"]["k6"]
    replicas = ramp["cpu"]["api-1"] + ramp["cpu"]["api-2"]
    assert f.hit_per_core.value == pytest.approx(ramp["requests"] / (replicas * ramp["wall_s"]))
    assert f.hit_per_core.value == pytest.approx(6_250, rel=0.01)  # 160 µs a lookup
    assert f.nginx_per_core.value == pytest.approx(16_136, rel=0.01)  # 62 µs a request
    assert f.redis_path_per_core.value == pytest.approx(3_331, rel=0.01)  # the bare handler
    assert f.redis_ops_per_core.value == pytest.approx(29_304, rel=0.01)
    cold = results["steps"]["cold"]["runs"]["cold pass"]
    fallbacks = cold["store"]["lookups"]["fallback_hit"]
    assert f.postgres_per_core.value == pytest.approx(
        fallbacks / (cold["cpu"]["postgres"] * cold["wall_s"])
    )
    assert f.fallbacks_per_connection.value == pytest.approx(fallbacks / cold["seconds"] / 16)
    assert f.pool_max.value == 8
    # 660 MiB of Redis over 664,824 students + 500,000 bookings
    assert f.redis_bytes_students.value == pytest.approx(594, rel=0.01)
    assert f.copy_bytes_bookings.value == pytest.approx(813, rel=0.01)
    assert "SURGE_BOOKINGS's default, not recorded" in f.redis_bytes_students.source
    assert f.replica_base_bytes.value == 0
    table = cap.figures_table(f)
    assert table.count("\n") == 2 + len(f.measured()) == 15


def test_measured_figures_take_the_place_of_derived_ones() -> None:
    results = json.loads(REPORT.read_text())
    derived = cap.figures(results)
    runs = {
        "copy": measured_run(10, {"api-1": 0.2}, local_hit=16_000),
        "Redis": measured_run(10, {"api-1": 0.5, "redis": 0.05}, redis_hit=16_000),
        "Postgres": measured_run(10, {"api-1": 0.8, "postgres": 0.2}, fallback_hit=16_000),
        "Postgres pool": measured_run(10, {"api-1": 0.9}, fallback_hit=24_000, waiting=40),
    }
    measured = capacity_figures.figures(
        runs,
        records={"students": 600_000, "bookings": 400_000},
        redis_bytes={"students": 492.0, "bookings": 720.0},
        body_bytes={"students": 450.0, "bookings": 600.0},
        rss_copy=100 * MIB + 700e6,
        rss_without=100 * MIB,
        pool_max=8,
    )
    assert {n for n, _ in derived.measured()} - set(measured) == {"nginx_per_core"}
    assert measured["hit_per_core"]["value"] == pytest.approx(16_000 / 2)
    assert measured["redis_ops_per_core"]["value"] == pytest.approx(16_000 / 0.5)
    assert measured["fallbacks_per_connection"]["value"] == pytest.approx(24_000 / 10 / 8)
    # 700 MB of copy: bodies 600,000 x 450 + 400,000 x 600 = 510 MB, 190 B an entry beside
    assert measured["copy_bytes_students"]["value"] == pytest.approx(450 + 190)
    assert measured["copy_bytes_bookings"]["value"] == pytest.approx(600 + 190)
    with_step = copy.deepcopy(results)
    with_step["steps"][cap.STEP] = {"figures": measured}
    f = cap.figures(with_step)
    assert f.hit_per_core.value == 8_000 and f.hit_per_core.source.startswith(cap.STEP)
    assert f.redis_bytes_bookings.value == 720 and f.replica_base_bytes.value == 100 * MIB
    assert f.nginx_per_core == derived.nginx_per_core  # not measured there: still derived
    p = cap.plan(cap.Demand(students=0, bookings=1_000_000, peak_rps=1_000), f)
    assert p.copy_bytes == pytest.approx(790e6)
    assert p.replica_memory_bytes == pytest.approx((100 * MIB + 790e6) * 1.5)


def measured_run(
    seconds: float, cpu: dict[str, float], waiting: float = 0, **lookups: float
) -> dict[str, Any]:
    return {"seconds": seconds, "wall_s": seconds, "cpu": cpu,
            "store": {"pool_waiting_max": waiting, "lookups": lookups}}  # fmt: skip


# -- docs/capacity.md's worked examples -------------------------------------------------------

EXAMPLES = {
    # name in the doc: the variables its command passes
    "ESSLCE": {"STUDENTS": "896520", "PEAK_RPS": "7500"},
    "board": {"STUDENTS": "1575000", "PEAK_RPS": "12500"},
    "on-sale": {"STUDENTS": "0", "BOOKINGS": "2000000", "PEAK_RPS": "40000"},
}


def doc_examples() -> list[tuple[dict[str, str], str]]:
    """Each `$ make capacity VAR=... ` block of docs/capacity.md: its variables and its output."""
    found = []
    for block in re.findall(r"```text\n(\$ make capacity [^\n]*)\n(.*?)```", DOC.read_text(), re.S):
        command, output = block
        variables = dict(arg.split("=", 1) for arg in shlex.split(command)[3:])
        found.append((variables, output))
    return found


def run_like_make(variables: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    """What `make capacity` prints for these variables, from the report the doc was made with."""
    flags = {"STUDENTS": "--students", "BOOKINGS": "--bookings", "PEAK_RPS": "--peak-rps",
             "HEADROOM": "--headroom", "FALLBACK_SHARE": "--fallback-share",
             "CORES_PER_NODE": "--cores-per-node", "REDIS_NODE_GB": "--redis-node-gb"}  # fmt: skip
    args = ["--results", str(REPORT)]
    for name, value in variables.items():
        args += [flags[name], value]
    assert cap.main(args) == 0
    return capsys.readouterr().out


def test_the_worked_examples_are_what_the_module_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    examples = doc_examples()
    assert [v for v, _ in examples] == list(EXAMPLES.values())
    for variables, shown in examples:
        assert run_like_make(variables, capsys) == shown, variables


def test_the_worked_examples_plan_what_their_size_needs() -> None:
    f = cap.figures(json.loads(REPORT.read_text()), "r.json")

    def demand(name: str) -> cap.Demand:
        v = EXAMPLES[name]
        return cap.Demand(
            students=int(v["STUDENTS"]),
            bookings=int(v.get("BOOKINGS", 0)),
            peak_rps=float(v["PEAK_RPS"]),
        )

    exam, board, sale = (cap.plan(demand(n), f) for n in EXAMPLES)
    assert exam.replicas == 2 and not exam.cluster and exam.pg_connections == 16
    assert exam.redis_bytes < 3 * GIB and exam.local_cache_mb > 1024  # the default is too small
    assert board.replicas == 4 and not board.cluster and board.nginx_workers == 2
    assert sale.replicas == 11 and sale.replica_nodes == 2 and sale.nginx_workers == 4
    assert sale.cluster and sale.redis_masters_for_ops == 3 and sale.redis_nodes == 6
    assert sale.pg_connections == 88
    for p in (exam, board, sale):
        assert p.replicas >= p.replica_cores and p.redis_ops > p.load_rps
