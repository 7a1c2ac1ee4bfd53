"""Throughput of one surge replica against the bare handler, in the same run, on the same data.

The bare handler (bench/bare_handler.py) does one Redis read and returns the bytes: the yardstick
(5.2-6.2k req/s for 2 replicas through nginx on the development machine). surge adds id validation,
the fallback path, the error shape, metrics; it must not be slower. surge also runs with
SURGE_METRICS=off, to show what metrics cost (at most 5% of req/s). Both run as one Granian worker;
wrk (-t1 -c256) asks for random student ids over the whole dataset; rounds alternate so the noise
of this shared machine falls on both alike.

Needs seeded stores: `make up` first (or SURGE_DATABASE_URL / SURGE_REDIS_URL). Writes
docs/benchmarks/api-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import urllib.request
from functools import partial
from pathlib import Path

import redis

from bench.machine import machine
from bench.wrk import random_students
from core.contract import STUDENTS
from core.settings import Settings
from seeder.generate import FIRST_STUDENT_ID
from stack.servers import free_port, granian_command, stop_children, wait_for

ROOT = Path(__file__).resolve().parent.parent

# name: (app factory, environment it runs with)
APPS = {
    "surge": ("api.app:create_app", {}),
    "surge, metrics off": ("api.app:create_app", {"SURGE_METRICS": "off"}),
    "bare handler": ("bench.bare_handler:create_app", {}),
}


def answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per app")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: `make deps` installs it")

    settings = Settings.from_env()
    last_id = FIRST_STUDENT_ID + settings.dataset.students - 1
    probe = redis.Redis.from_url(settings.stores.redis_url)
    if probe.hget(*STUDENTS.live_slot(probe, last_id)) is None:
        sys.exit(f"student {last_id} is not in Redis: seed first (`make up`)")
    probe.close()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs, ports = [], {}
    try:
        for name, (factory, app_env) in APPS.items():
            port = free_port()
            cmd = granian_command(factory, port, settings.stores.redis_pool_size)
            quiet = subprocess.DEVNULL
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env={**env, **app_env}, stdout=quiet, stderr=quiet)
            )
            wait_for(partial(answers, port, f"/students/{FIRST_STUDENT_ID}"), timeout=30, what=name)
            ports[name] = port
        for port in ports.values():  # warm-up: connections, prepared paths, caches
            random_students(f"http://127.0.0.1:{port}", 2, args.connections, last_id)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in APPS}
        for round_no in range(args.rounds):
            for name, port in ports.items():
                result = random_students(
                    f"http://127.0.0.1:{port}", args.seconds, args.connections, last_id
                )
                results[name].append(result)
                print(f"round {round_no + 1} {name}: {result['rps']:.0f} req/s, "
                      f"p99 {result['p99_ms']:.1f} ms, errors {result['non_2xx']:.0f}"
                      f"+{result['socket_errors']:.0f}")  # fmt: skip
    finally:
        stop_children(procs, timeout=30)

    report = markdown(results, args, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"api-{datetime.date.today().isoformat()}.md"
    path.write_text(report)
    print(report)
    print(f"wrote {path}")
    return 0


def markdown(results: dict[str, list[dict[str, float]]], args: argparse.Namespace,
             settings: Settings) -> str:  # fmt: skip
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    rows = []
    for name, runs in results.items():
        per_round = " / ".join(f"{r['rps']:,.0f}" for r in runs)
        rows.append(
            f"| {name} | {median([r['rps'] for r in runs]):,.0f} | {per_round} "
            f"| {median([r['p50_ms'] for r in runs]):.1f} "
            f"| {median([r['p99_ms'] for r in runs]):.1f} "
            f"| {sum(r['non_2xx'] + r['socket_errors'] for r in runs):.0f} |"
        )
    surge = median([r["rps"] for r in results["surge"]])
    unmetered = median([r["rps"] for r in results["surge, metrics off"]])
    bare = median([r["rps"] for r in results["bare handler"]])
    facts = "\n".join(f"| {k} | {v} |" for k, v in machine(settings))
    return f"""# One replica: surge vs the bare handler ({datetime.date.today().isoformat()})

Command: `make bench` (this part: `.venv/bin/python -m bench.api --seconds {args.seconds} \
--rounds {args.rounds} --connections {args.connections}`), against the stores `make up` seeded.
Load: `wrk -t1 -c{args.connections}` with random student ids over \
{settings.dataset.students:,} records, straight to one Granian worker each (no nginx), rounds \
alternating between the two apps.

| app | req/s (median) | req/s per round | p50 ms | p99 ms | errors |
|---|---|---|---|---|---|
{chr(10).join(rows)}

surge / bare handler: **{surge / bare:.0%}**. Metrics cost {1 - surge / unmetered:.1%} of req/s
(surge with metrics / surge without: {surge / unmetered:.0%}; the target is a cost of at most 5%).

| machine | |
|---|---|
{facts}
"""


if __name__ == "__main__":
    raise SystemExit(main())
