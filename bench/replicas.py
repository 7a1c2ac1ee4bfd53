"""Throughput through nginx with 1, 2 and 3 replicas on this machine: what SURGE_REPLICAS is worth.

On one machine more replicas can mean less throughput (a reference booking service fell from
1,817 to 699 req/s going from 1 to 3 instances), so the default is chosen from these figures.

The topology is the real one, started by the launcher (`python -m stack up`, stack/launcher.py)
in a run dir of its own on free ports, so a developer's `make up` on 8080 is left alone: nginx
(rate limit off: wrk is one client IP) in front of N Granian replicas, using the stores of
`make up` (or SURGE_DATABASE_URL / SURGE_REDIS_URL), which must hold the seeded dataset. Prometheus
and the exporters are left out (SURGE_MONITORING=off): they are the same for every N.

Each measurement: `wrk -t1 -c256 -d10s -s bench/random_students.lua` (random student ids over the
whole dataset), after a 2 s warm-up. The replica count is switched with `up` (SURGE_REPLICAS=N:
missing replicas start, nginx reloads, extra ones stop gracefully), and the order of N alternates
from round to round, so that the noise of this shared machine falls on every N alike. CPU per
process group (nginx, the replicas, Redis, wrk) comes from /proc over the measured 10 s.

Writes docs/benchmarks/replicas-<date>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from bench.machine import machine
from bench.wrk import random_students
from core.contract import STUDENTS
from core.settings import Settings
from seeder.generate import FIRST_STUDENT_ID
from stack.launcher import Layout, Stack, default_replicas, spare_env
from stack.servers import HOST

ROOT = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def _machine_ticks() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def busy_cores_seconds() -> float:
    """CPU time the whole machine spent on its own work (all cores, from /proc/stat): neither
    idle, nor waiting for I/O, nor stolen by the hypervisor."""
    ticks = _machine_ticks()
    return (sum(ticks[:7]) - ticks[3] - ticks[4]) / CLK_TCK


def steal_cores_seconds() -> float:
    """CPU time the hypervisor ran something else on this VM's cores (/proc/stat's steal): a
    shared host's slow hours, which make every process's CPU per request dearer."""
    return _machine_ticks()[7] / CLK_TCK


class Topology:
    """The launcher's stack in a temp dir on free ports, using existing stores."""

    def __init__(self, settings: Settings) -> None:
        self.run = Path(tempfile.mkdtemp(prefix="surge-bench-replicas-"))
        self.run.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
        self.env.update(spare_env(self.run))
        self.env.update(
            {
                "SURGE_DATABASE_URL": settings.stores.database_url,
                "SURGE_REDIS_URL": settings.stores.redis_url,
                "SURGE_STUDENTS": str(settings.dataset.students),
                "SURGE_BOOKINGS": str(settings.dataset.bookings),
                "SURGE_SEED": str(settings.dataset.seed),
                "SURGE_RATE_LIMIT": "off",
                "SURGE_MONITORING": "off",
            }
        )
        self.layout = Layout.from_env(self.env)
        self.url = f"http://{HOST}:{self.layout.http_port}"

    def launcher(self, *args: str, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "stack", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"stack {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def scale(self, n: int) -> None:
        self.launcher("up", SURGE_REPLICAS=str(n))

    def groups(self) -> dict[str, list[int]]:
        """Pids per role: nginx (master + workers), replicas (each Granian + its worker)."""
        out: dict[str, list[int]] = {"nginx": [], "replicas": []}
        for name, pids in Stack(self.layout, self.env).process_groups().items():
            if name == "nginx" or name.startswith("api-"):
                out["nginx" if name == "nginx" else "replicas"] += pids
        return out

    def nginx_errors(self) -> Counter[str]:
        """nginx's error log, counted by message (no times, ids, clients or requests)."""
        log = self.layout.nginx_prefix / "logs" / "error.log"
        counts: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                match = re.match(r"\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?([^,]*)", line)
                if match:
                    counts[f"[{match[1]}] {match[2]}"] += 1
        return counts

    def down(self) -> None:
        try:
            self.launcher("down")
        finally:
            shutil.rmtree(self.run, ignore_errors=True)


def measure(
    top: Topology, seconds: int, connections: int, last_id: int, redis_pid: int
) -> dict[str, float]:
    random_students(top.url, 2, connections, last_id)  # warm-up: connections, pools, caches
    groups = top.groups()
    before = {role: cpu_seconds(pids) for role, pids in groups.items()}
    before["redis"] = cpu_seconds([redis_pid])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = busy_cores_seconds()
    started = time.monotonic()
    result = random_students(top.url, seconds, connections, last_id)
    wall = time.monotonic() - started
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    for role, pids in groups.items():
        result[f"cpu_{role}"] = (cpu_seconds(pids) - before[role]) / wall
    result["cpu_redis"] = (cpu_seconds([redis_pid]) - before["redis"]) / wall
    used = (after_children.ru_utime - children.ru_utime) + (
        after_children.ru_stime - children.ru_stime
    )
    result["cpu_wrk"] = used / wall
    ours = sum(result[f"cpu_{role}"] for role in ("nginx", "replicas", "redis", "wrk"))
    result["cpu_other"] = max(0.0, (busy_cores_seconds() - machine_before) / wall - ours)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to compare")
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.replicas.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: `make deps` installs it")

    settings = Settings.from_env()
    last_id = FIRST_STUDENT_ID + settings.dataset.students - 1
    try:
        probe = redis.Redis.from_url(settings.stores.redis_url)
        seeded = probe.hget(*STUDENTS.live_slot(probe, last_id)) is not None
        redis_pid = int(probe.info("server")["process_id"])
        probe.close()
    except redis.RedisError as e:
        sys.exit(f"Redis at {settings.stores.redis_url} does not answer ({e}): `make up` first")
    if not seeded:
        sys.exit(f"student {last_id} is not in Redis: seed first (`make up`)")

    top = Topology(settings)
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    try:
        for round_no in range(args.rounds):
            order = counts if round_no % 2 == 0 else counts[::-1]
            for n in order:
                top.scale(n)
                result = measure(top, args.seconds, args.connections, last_id, redis_pid)
                results[n].append(result)
                print(
                    f"round {round_no + 1}, {n} replica(s): {result['rps']:,.0f} req/s, "
                    f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                    f"errors {result['errors']:.0f}, CPU nginx {result['cpu_nginx']:.2f} "
                    f"replicas {result['cpu_replicas']:.2f} redis {result['cpu_redis']:.2f} "
                    f"wrk {result['cpu_wrk']:.2f} other {result['cpu_other']:.2f}",
                    flush=True,
                )
    finally:
        nginx_errors = top.nginx_errors()
        top.down()

    report = markdown(results, args, settings, nginx_errors)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"replicas-{datetime.date.today().isoformat()}.md"
    path.write_text(report)
    print(report)
    print(f"wrote {path}")
    return 0


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def best_count(results: dict[int, list[dict[str, float]]]) -> int:
    """The fewest replicas within 5% of the highest median req/s (more replicas cost memory and
    connections for nothing when they do not add throughput)."""
    medians = {n: median([r["rps"] for r in runs]) for n, runs in results.items()}
    top = max(medians.values())
    return min(n for n, rps in medians.items() if rps >= 0.95 * top)


def markdown(
    results: dict[int, list[dict[str, float]]],
    args: argparse.Namespace,
    settings: Settings,
    nginx_errors: Counter[str],
) -> str:
    rows = []
    for n, runs in results.items():
        per_round = " / ".join(f"{r['rps']:,.0f}{'!' if r['errors'] else ''}" for r in runs)
        rows.append(
            f"| {n} | **{median([r['rps'] for r in runs]):,.0f}** | {per_round} "
            f"| {median([r['p50_ms'] for r in runs]):.1f} "
            f"| {median([r['p99_ms'] for r in runs]):.1f} "
            f"| {sum(r['errors'] for r in runs):.0f} "
            f"| {median([r['cpu_nginx'] for r in runs]):.2f} "
            f"| {median([r['cpu_replicas'] for r in runs]):.2f} "
            f"| {median([r['cpu_redis'] for r in runs]):.2f} "
            f"| {median([r['cpu_wrk'] for r in runs]):.2f} "
            f"| {median([r['cpu_other'] for r in runs]):.2f} |"
        )
    best = best_count(results)
    facts = "\n".join(f"| {k} | {v} |" for k, v in machine(settings))
    errors = "\n".join(f"| {msg} | {n:,} |" for msg, n in nginx_errors.most_common(8))
    errors = (
        f"""
nginx's error log over the whole benchmark (warm-ups and switches included):

| message | count |
|---|---|
{errors}
"""
        if errors
        else "\nnginx's error log stayed empty.\n"
    )
    counts = ",".join(str(n) for n in results)
    return f"""# Replicas behind nginx: {counts} ({datetime.date.today().isoformat()})

Command: `make bench`; this part, against seeded stores ({settings.dataset.students:,} students; Redis
{settings.stores.redis_url}):

    .venv/bin/python -m bench.replicas --replicas {counts} --seconds {args.seconds} \
--rounds {args.rounds} --connections {args.connections}

Load: `wrk -t1 -c{args.connections} -d{args.seconds}s -s bench/random_students.lua` through nginx
(one worker, rate limit off) to N replicas of one Granian worker each, started by the launcher
(`python -m stack up` with SURGE_REPLICAS=N); random student ids over the whole dataset; a 2 s
warm-up before each run; the order of N alternates between rounds. Good req/s counts 2xx answers
only (nginx's 502s are fast: counted, they would pass for throughput); a round with errors is
marked `!`. CPU is in cores (1.00 = one core busy for the whole run), median over the rounds; the
machine has {os.cpu_count()}. "CPU others" is what the rest of the machine used meanwhile
(Postgres, other people's work on this shared box): the noise the figures carry.

| replicas | good req/s (median) | per round | p50 ms | p99 ms | errors | CPU nginx | CPU replicas | CPU redis | CPU wrk | CPU others |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Fewest replicas within 5% of the best median: **{best}** (the default in compose.yaml,
`${{SURGE_REPLICAS:-N}}`, which `make up` reads too, is {default_replicas()}).
{errors}
| machine | |
|---|---|
{facts}
"""  # noqa: E501


if __name__ == "__main__":
    raise SystemExit(main())
