"""`make bench`: one fixed benchmark set against the local stack, written up as a dated report.

Steps (`--only NAME[,NAME]`), each bounded in time, configurations compared in the same run:

  fixed     wrk -t1 -c256, random student ids over the whole dataset, through nginx (one worker,
            rate limit off) to the default replica count: surge, then the bare handler
            (bench/bare_handler.py) behind a second nginx from the same template, rounds
            alternating. Target: surge >= 1.3 x the bare handler's req/s, zero errors.
  ramp      k6/reference-ramp.js (20 s to 3,000 VUs, held 40 s) against the floor (nginx alone
            answering a fixed record, bench/floor.py), the stack floor (Granian serving fixed
            bytes behind the project's nginx, bench/raw_asgi.py), the bare handler and surge,
            back to back; targets: 0 failed, p95 <= 20 ms, p99 <= 100 ms, server CPU <= 200 µs
            a request
  spike     k6/spike.js the same way (3,000 VUs within 5 s; 0 failed, p99 <= 100 ms)
  results_day
            k6/results-day.js against surge: steep arrivals, each person looking several
            times; p95/p99, failures and who answered (the replica's copy, Redis, Postgres)
  cold      the live version of the students' Redis hashes deleted (nothing else) and the
            replicas restarted (their own copies empty), a wrk pass of
            N fixed random ids (served via Postgres and written back), the same N ids again
            (warm), against a warm pass of other ids measured first; Redis is refilled after
            (`surge-seed`). Targets: cold >= 40% of warm, second pass at the warm rate.
  replicas  the fixed-concurrency wrk run through nginx with 1, 2 and 3 replicas
  metrics   one replica with SURGE_METRICS on and off, straight to Granian (bench/api.py's
            apps and wrk); target: metrics cost <= 5% of req/s
  capacity_figures
            the inputs of `make capacity` no other step isolates (bench/capacity_figures.py):
            CPU per lookup from the copy, from Redis and from Postgres, Postgres fallbacks per
            connection, Redis and copy bytes per record of each dataset
  redis_cluster
            a single Redis and a 3-master + 3-replica Redis Cluster started on free ports for
            the step, both seeded from Postgres (bench/redis_cluster.py); one replica with its
            copy off against each, wrk straight to it, rounds alternating: req/s, p50/p99, CPU
            per request of the replica and of Redis, cluster / single. Figures, not asserted.
  netns_ramp
            the reference ramp across hosts ~1 ms apart (network namespaces, stack/netns.py):
            k6 on a client host, nginx, two replicas, Redis and Postgres on theirs, seeded for
            the step; beside the floor nginx on the edge host (bench/netns_ramp.py). Asserted:
            0 failed requests on surge.
  overload  wrk with bench/statuses.lua through nginx: at capacity (as many connections as nginx
            admits at once, SURGE_NGINX_MAX_INFLIGHT), at three times as many, then at capacity
            again, and the 3x wrk against the floor nginx (the most the machine can send and
            answer). Asserted: >= 3x the capacity offered; every answer a 200 or a 503/429 with
            Retry-After and a problem+json body, none timed out; p99 <= 500 ms, none >= 2 s;
            memory within 10% of the capacity phase's; recovery to >= 90% of capacity, no refusal.
  soak      bench/statuses.lua's mix at half the measured capacity (paced connections) for 11
            min; memory, fds, tasks and connections sampled (bench/resources.py). Asserted: no
            failed request; replica memory grows < 5% from the baseline minute (1-2 min in) to
            the last; no count grows by more than max(2, 10%).

The overload and soak targets are assertions: a miss makes this exit 1 after writing
the report. The others are figures of a shared machine, reported met or missed.

For every run: CPU per process (nginx, each replica, Redis, Postgres, the load generator; /proc
before/after and every second), and from each replica's /metrics the Postgres pool waits (max,
sampled every second), failed store calls and lookups by outcome: which tier saturated first.
For the k6 runs also nginx's own times per second from its access log (bench/tiers.py).

The nginx + replicas under test are the launcher's (`python -m stack up`), started in a run
dir of their own on free ports with SURGE_RATE_LIMIT=off and no monitoring, against the stores
`make up` runs (which must hold the seeded dataset): the public :8080 stack is left as it is,
and whatever this starts is stopped at the end, even on failure or Ctrl-C.

Writes docs/benchmarks/report-<date>.md, charts and results.json in docs/benchmarks/<date>/.
`--quick`: seconds-long runs and small VU counts, for development and a smoke of this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench import capacity_figures, netns_ramp, recovery, redis_cluster, report_render, say, tiers
from bench.api import APPS as DIRECT_APPS
from bench.api import answers
from bench.client_series import ClientSeries
from bench.floor import Floor
from bench.k6 import K6, K6_GO_ENV, k6
from bench.machine import machine
from bench.resources import Probe, Resources
from bench.sampling import Measure, median_run, store_pids, with_children
from bench.topology import BareTopology, Topology
from bench.wrk import random_students, wrk
from core.contract import LIVE_KEY, STUDENTS, parse_version
from core.settings import Settings
from seeder.generate import FIRST_STUDENT_ID
from stack.servers import (
    free_port,
    granian_command,
    k6_version,
    stop_children,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


OUT = ROOT / "docs/benchmarks"


# -- profiles ---------------------------------------------------------------------------------

FULL = {
    "seconds": 10,  # one wrk run
    "rounds": 3,  # alternating rounds per configuration
    "connections": 256,
    "ramp_env": {"STAGES": "20s:3000,40s:3000"},  # the original write-up's: 20 s up, 40 s held
    "spike_env": {},  # 0 -> 3,000 in 5 s, held 1 m
    "results_day_env": {},  # the script's own: 300 arrivals/s at the peak, 70 s
    "k6_timeout": 900,
    "cold_ids": 30_000,
    "replicas": (1, 2, 3),
    "overload_seconds": 20,  # each of: at capacity, at three times, recovery
    "recovery_seconds": 75,  # redis_empty: the fault 10 s in, 65 s to be whole again
    "recovery_fault_at": 10,
    "outage_seconds": 60,  # postgres_gone
    "flood_seconds": 15,  # unknown_flood, each round of known and of unknown ids
    "soak_seconds": 660,  # the first minute warms up, the next is the baseline: 10 min measured
    "soak_window": 60,
}
QUICK = {
    "seconds": 3,
    "rounds": 1,
    "connections": 64,
    "ramp_env": {"STAGES": "3s:60,4s:120,2s:0"},
    "spike_env": {"STAGES": "2s:150,4s:150,2s:0"},
    "results_day_env": {"STAGES": "2s:20,4s:20,2s:0", "PREALLOCATED_VUS": "200"},
    "k6_timeout": 120,
    "cold_ids": 3_000,
    "replicas": (1, 2),
    "overload_seconds": 4,
    "recovery_seconds": 40,
    "recovery_fault_at": 5,
    "outage_seconds": 8,
    "flood_seconds": 4,
    "soak_seconds": 40,
    "soak_window": 10,
}


# -- the steps --------------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, profile: Mapping[str, Any], work: Path) -> None:
        self.settings = settings
        self.p = profile
        self.work = work
        self.last_id = FIRST_STUDENT_ID + settings.dataset.students - 1
        self.stores = lambda: store_pids(settings)
        self._top: Topology | None = None
        self.capacity_run: dict[str, Any] | None = None
        from stack.launcher import default_replicas

        self.default_replicas = default_replicas()

    @property
    def top(self) -> Topology:
        if self._top is None:
            self._top = Topology(self.settings)
        return self._top

    def close(self) -> None:
        if self._top is not None:
            self._top.down()

    def measured(
        self,
        groups: dict[str, list[int]],
        ports: dict[str, int],
        load: Callable[[], dict[str, Any]],
        loadgen: str,
    ) -> dict[str, Any]:
        with Measure(groups, ports, self.stores) as m:
            run = load()
        return m.attach(run, loadgen)

    def surge_wrk(self, script: str = "random_students.lua", *args: int) -> dict[str, Any]:
        groups, ports = self.top.processes()
        args = args or (FIRST_STUDENT_ID, self.last_id)
        seconds = self.p["seconds"] if script == "random_students.lua" else 300
        return self.measured(
            groups,
            ports,
            lambda: wrk(self.top.url, seconds, self.p["connections"], script, *args),
            "wrk",
        )

    def fixed(self) -> dict[str, Any]:
        n, conns = self.default_replicas, self.p["connections"]
        self.top.scale(n)
        bare = BareTopology(self.settings, n, self.work / "nginx-bare")
        try:

            def bare_run() -> dict[str, Any]:
                return random_students(
                    bare.url,
                    self.p["seconds"],
                    conns,
                    self.last_id,
                )

            random_students(self.top.url, 2, conns, self.last_id)
            bare_run()  # warm-ups
            rounds: dict[str, list[dict[str, Any]]] = {"surge": [], "bare handler": []}
            for i in range(self.p["rounds"]):
                order = ["surge", "bare handler"][:: 1 if i % 2 == 0 else -1]
                for name in order:
                    if name == "surge":
                        run = self.surge_wrk()
                    else:
                        run = self.measured(bare.groups(), {}, bare_run, "wrk")
                    say(f"fixed {name}: {run['rps']:,.0f} req/s, errors {run['errors']:.0f}")
                    rounds[name].append(run)
        finally:
            bare.stop()
        return {
            "how": f"`wrk -t1 -c{conns} -d{self.p['seconds']}s -s bench/random_students.lua` "
            f"(ids {FIRST_STUDENT_ID:,}..{self.last_id:,}) through one nginx worker "
            f"(rate limit off) to {n} replica(s) of each; {self.p['rounds']} alternating "
            "round(s), the median round shown; 2 s warm-up each.",
            "runs": {k: median_run(v) for k, v in rounds.items()},
        }

    def k6_step(self, script: str, env: Mapping[str, str]) -> dict[str, Any]:
        """One k6 scenario against the floor (nginx alone), the bare handler and surge, in that
        order, in the same run: the same generator and machine for all three."""
        self.top.scale(self.default_replicas)
        k6_env = {"SURGE_STUDENTS": str(self.settings.dataset.students), **env}
        timeout, work = self.p["k6_timeout"], self.work / "k6"
        beside: dict[str, dict[str, Any]] = {}
        with Floor(self.work / "nginx-floor") as floor:
            with Measure({"nginx": floor.pids()}, {}) as m:
                out = k6(script, floor.url, k6_env, timeout, work, {})
            beside["floor"] = m.attach(out["run"], "k6")
        yardsticks = (
            (report_render.STACK_FLOOR, "bench.raw_asgi:create_app", "granian"),
            ("bare handler", "bench.bare_handler:create_app", "bare"),
        )
        for label, app, kind in yardsticks:
            bare = BareTopology(
                self.settings, self.default_replicas, self.work / f"nginx-{kind}", app, kind
            )
            try:
                with Measure(bare.groups(), {}, self.stores) as m:
                    out = k6(script, bare.url, k6_env, timeout, work, {})
                beside[label] = m.attach(out["run"], "k6")
            finally:
                bare.stop()
        for name, other in beside.items():
            say(f"{script} {name}: p95 {other['p95_ms']:.1f} ms, p99 {other['p99_ms']:.1f} ms")
        run, timeline = self.surge_k6(script, k6_env)
        say(
            f"{script}: {run['rps']:,.0f} req/s, failed {run['errors']:.0f}, "
            f"p95 {run['p95_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms"
        )
        shape = ", ".join(f"{k}={v}" for k, v in env.items()) or "the script's default stages"
        return {
            "how": f"`k6 run k6/{script}.js` ({shape}) through nginx to "
            f"{self.default_replicas} replica(s); k6 on the same machine with "
            f"{' '.join(f'{k}={v}' for k, v in K6_GO_ENV.items())}. The same script, back to "
            "back: `floor` against an nginx answering every lookup itself with a fixed record "
            f"(bench/floor.py), `{report_render.STACK_FLOOR}` against Granian serving a raw "
            "ASGI app that answers with a fixed record (bench/raw_asgi.py) behind the project's "
            "nginx (what the server stack costs before any lookup), `bare handler` against "
            "bench/bare_handler.py's replicas behind the project's nginx, `k6` against surge.",
            "runs": {**beside, "k6": run},
            "timeline": timeline,
        }

    def surge_k6(
        self, script: str, k6_env: Mapping[str, str]
    ) -> tuple[dict[str, Any], list[dict[str, float]]]:
        """One k6 run against surge: its figures, CPU, nginx's view of it, and its timeline."""
        groups, ports = self.top.processes()
        timeout, work = self.p["k6_timeout"], self.work / "k6"
        with ClientSeries() as client:
            since = time.time()
            with Measure(groups, ports, self.stores) as m:
                out = k6(script, self.top.url, {**k6_env, **client.k6_env}, timeout, work, ports)
            run = m.attach(out["run"], "k6")
            tiers.attach_views(run, self.top.access_log, client, since)
        return run, out["timeline"]

    def results_day(self) -> dict[str, Any]:
        self.top.scale(self.default_replicas)
        env = {"SURGE_STUDENTS": str(self.settings.dataset.students), **self.p["results_day_env"]}
        run, timeline = self.surge_k6("results-day", env)
        lookups = run["store"]["lookups"]
        total = sum(lookups.values()) or 1.0
        say(
            f"results-day: {run['rps']:,.0f} req/s, failed {run['errors']:.0f}, p95 "
            f"{run['p95_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms; lookups "
            + ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(lookups.items()))
        )
        shape = ", ".join(f"{k}={v}" for k, v in env.items())
        return {
            "how": f"`k6 run k6/results-day.js` ({shape}) through nginx to "
            f"{self.default_replicas} replica(s), k6 as in the ramp: people arriving at a rate "
            "rising to its peak in 10 s and decaying, each looking up their own id several "
            "times a few seconds apart, 3% mistyping it first (400/404 are right answers).",
            "runs": {"k6": run},
            "layers": {
                "nginx micro-cache": "off (SURGE_NGINX_MICROCACHE)",
                **{k: f"{v:,.0f} ({v / total:.1%})" for k, v in sorted(lookups.items())},
            },
            "timeline": timeline,
        }

    def ramp(self) -> dict[str, Any]:
        return self.k6_step("reference-ramp", self.p["ramp_env"])

    def spike(self) -> dict[str, Any]:
        return self.k6_step("spike", self.p["spike_env"])

    def cold(self) -> dict[str, Any]:
        self.top.scale(self.default_replicas)
        count = self.p["cold_ids"]
        self.surge_wrk()  # warm-up: connections and pools
        runs: dict[str, dict[str, Any]] = {}
        client = redis.Redis.from_url(self.settings.stores.redis_url)
        try:
            runs["warm"] = self.surge_wrk(
                "student_pass.lua", FIRST_STUDENT_ID, self.last_id, count, 1
            )
            deleted = clear_live_students(client)
            say(f"cold: deleted {deleted:,} live student hashes; replicas restarted")
            self.top.launcher("restart")  # and their own copies of the students with them
            runs["cold pass"] = self.surge_wrk(
                "student_pass.lua", FIRST_STUDENT_ID, self.last_id, count, 2
            )
            runs["second pass"] = self.surge_wrk(
                "student_pass.lua", FIRST_STUDENT_ID, self.last_id, count, 2
            )
            for name, run in runs.items():
                say(f"cold {name}: {run['rps']:,.0f} req/s, errors {run['errors']:.0f}")
        finally:
            reseed(client, self.settings)
            client.close()
        return {
            "how": f"Each pass: exactly {count:,} lookups of random student ids from a fixed "
            f"seed (`bench/student_pass.lua`), wrk -c{self.p['connections']} through nginx to "
            f"{self.default_replicas} replica(s). `warm`: other ids, Redis full. Then the live "
            f"version's student hashes were deleted ({deleted:,}; bookings and the version "
            "pointer left alone) and the replicas restarted, so that their own copies held no "
            "student either: `cold pass` read every id from Postgres and wrote it back; "
            "`second pass` asked for the same ids again. Afterwards the hashes were deleted "
            "again and `surge-seed` refilled Redis from Postgres.",
            "runs": runs,
        }

    def replicas(self) -> dict[str, Any]:
        rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in self.p["replicas"]}
        for i in range(self.p["rounds"]):
            for n in self.p["replicas"][:: 1 if i % 2 == 0 else -1]:
                self.top.scale(n)
                random_students(
                    self.top.url,
                    2,
                    self.p["connections"],
                    self.last_id,
                )
                run = self.surge_wrk()
                say(f"{n} replica(s): {run['rps']:,.0f} req/s, errors {run['errors']:.0f}")
                rounds[n].append(run)
        self.top.scale(self.default_replicas)
        return {
            "how": f"The fixed-concurrency wrk run (-c{self.p['connections']}, "
            f"{self.p['seconds']} s) through nginx with SURGE_REPLICAS=N (the launcher scales "
            f"and reloads nginx); {self.p['rounds']} round(s), order alternating, median shown.",
            "runs": {
                f"{n} replica{'s' if n > 1 else ''}": median_run(r) for n, r in rounds.items()
            },
        }

    def metrics(self) -> dict[str, Any]:
        apps = {
            "metrics on": DIRECT_APPS["surge"],
            "metrics off": DIRECT_APPS["surge, metrics off"],
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports: dict[str, int] = {}
        try:
            for name, (factory, app_env) in apps.items():
                ports[name] = free_port()
                cmd = granian_command(factory, ports[name], self.settings.stores.redis_pool_size)
                procs[name] = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env={**env, **app_env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            for name, port in ports.items():
                wait_for(
                    partial(answers, port, f"/students/{FIRST_STUDENT_ID}"),
                    timeout=30,
                    what=name,
                )
            url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            for name in apps:
                random_students(
                    url[name],
                    2,
                    self.p["connections"],
                    self.last_id,
                )
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in apps}
            for i in range(self.p["rounds"]):
                for name in list(apps)[:: 1 if i % 2 == 0 else -1]:
                    groups = {"api-1": with_children(procs[name].pid)}
                    metric_ports = {"api-1": ports[name]} if name == "metrics on" else {}
                    run = self.measured(
                        groups,
                        metric_ports,
                        partial(
                            random_students,
                            url[name],
                            self.p["seconds"],
                            self.p["connections"],
                            self.last_id,
                        ),
                        "wrk",
                    )
                    say(f"{name}: {run['rps']:,.0f} req/s")
                    rounds[name].append(run)
        finally:
            stop_children(procs.values())
        return {
            "how": "bench/api.py's setup: one Granian worker each, wrk straight to it (no nginx), "
            f"-c{self.p['connections']}, {self.p['seconds']} s, {self.p['rounds']} alternating "
            "round(s), median shown. SURGE_METRICS=off drops the middleware and the /metrics "
            "route.",
            "runs": {k: median_run(v) for k, v in rounds.items()},
        }

    # -- capacity_figures: bench/capacity_figures.py, the inputs of `make capacity` -----------

    def capacity_figures(self) -> dict[str, Any]:
        return capacity_figures.step(self)

    # -- redis_cluster: bench/redis_cluster.py, its own stores -------------------------------

    def redis_cluster(self) -> dict[str, Any]:
        return redis_cluster.step(self)

    def netns_ramp(self) -> dict[str, Any]:
        return netns_ramp.step(self)

    # -- reliability: asserted, not only reported ---------------------------------------------

    def statuses_wrk(
        self,
        seconds: int,
        connections: int,
        *args: object,
        threads: int = 1,
        ids: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """A measured wrk run of bench/statuses.lua (every answer sorted by status) through nginx;
        5 s before a request counts as timed out: nginx's own read timeout. Its `errors` are the
        answers that are wrong (report_render.improper), not the refusals or expected 4xx."""
        groups, ports = self.top.processes()
        run = self.measured(
            groups,
            ports,
            lambda: wrk(
                self.top.url,
                seconds,
                connections,
                "statuses.lua",
                *(ids or (FIRST_STUDENT_ID, self.last_id)),
                *args,
                threads=threads,
                timeout="5s",
            ),
            "wrk",
        )
        run["errors"] = report_render.improper(run)
        return run

    def capacity_connections(self) -> int:
        """Half the admission cap: at the knee of this machine's throughput (c=128 and c=256
        give the same req/s) and well inside the cap, so that another client (the overload
        step's probe) never pushes a capacity run into refusals, which a closed loop would
        turn into thousands a second."""
        return max(1, self.top.admission_cap // 2)

    def capacity(self) -> dict[str, Any]:
        """Random students through nginx, nothing refused: the 2xx rate is what this stack
        serves on this machine now."""
        if self.capacity_run is None:
            self.top.scale(self.default_replicas)
            conns = self.capacity_connections()
            self.statuses_wrk(2, conns)  # warm-up
            self.capacity_run = self.statuses_wrk(self.p["overload_seconds"], conns)
            say(f"capacity: {self.capacity_run['rps']:,.0f} req/s at {conns} connections")
        return self.capacity_run

    def overload(self) -> dict[str, Any]:
        self.top.scale(self.default_replicas)
        cap, seconds = self.top.admission_cap, self.p["overload_seconds"]
        normal = self.capacity_connections()
        self.statuses_wrk(2, normal)  # warm-up
        phases = (("capacity", normal, 1), ("3x capacity", 3 * cap, 2), ("recovery", normal, 1))
        runs: dict[str, dict[str, Any]] = {}
        spans: dict[str, tuple[float, float]] = {}
        probed: dict[str, dict[str, dict[str, float]]] = {}
        with (
            Resources(self.top.processes, self.settings, self.top.status_url, 0.5) as res,
            Probe(self.top.url, self.last_id) as probe,
        ):
            time.sleep(1.0)  # a few samples before the load
            for label, conns, threads in phases:
                start, probe_start = res.elapsed(), time.monotonic()
                runs[label] = self.statuses_wrk(seconds, conns, threads=threads)
                spans[label] = (start, res.elapsed())
                probed[label] = probe.summary(probe_start, time.monotonic())
                run = runs[label]
                say(
                    f"overload {label}: {run['requests'] / run['seconds']:,.0f} req/s offered, "
                    f"{run['rps']:,.0f} 200/s, refused {run['refused']:,}, other "
                    f"{run['other'] + run['refused_bare']:,}, socket errors "
                    f"{run['socket_errors']:,}, p99 {run['p99_ms']:.0f} ms, max "
                    f"{run['max_ms']:.0f} ms"
                )
        self.capacity_run = runs["capacity"]
        with Floor(self.work / "nginx-floor") as floor:  # the most this machine can offer
            floor_run = self.measured(
                {"nginx": floor.pids()},
                {},
                lambda: wrk(
                    floor.url,
                    seconds,
                    3 * cap,
                    "statuses.lua",
                    FIRST_STUDENT_ID,
                    self.last_id,
                    threads=2,
                    timeout="5s",
                ),
                "wrk",
            )
        say(f"overload floor: {floor_run['requests'] / floor_run['seconds']:,.0f} req/s answered")
        return {
            "how": f"wrk with bench/statuses.lua (random students, every answer sorted by "
            f"status), {seconds} s per phase, back to back, through nginx to "
            f"{self.default_replicas} replica(s) (rate limit off: one client IP), nginx "
            f"admitting {cap} record requests at once (SURGE_NGINX_MAX_INFLIGHT). `capacity`: "
            f"-t1 -c{normal}, nothing refused: its 200/s is the capacity. `3x capacity`: -t2 "
            f"-c{3 * cap}, three times as many clients as nginx admits, each sending its next "
            "request as soon as it has an answer (refusals too: the worst case, clients that "
            f"ignore Retry-After); the offered rate is in the targets. `recovery`: -c{normal} "
            "again, right after. A request counts as timed "
            "out after 5 s (nginx's read timeout). Memory, tasks and connections sampled every "
            "0.5 s (bench/resources.py); the table shows each phase's maximum. Meanwhile a probe "
            "opened a new connection every 50 ms for one lookup and timed it alone: the "
            "latency of refusals and admitted requests apart. Last, the same `3x capacity` wrk "
            "against the floor (bench/floor.py: nginx answering a fixed record by itself): the "
            "most this machine's cores can send and answer.",
            "runs": runs,
            "floor": floor_run,
            "resources": {label: res.maxima(*span) for label, span in spans.items()},
            "probe": probed,
            "admission_cap": cap,
        }

    def redis_empty(self) -> dict[str, Any]:
        return recovery.redis_empty(self)

    def postgres_gone(self) -> dict[str, Any]:
        return recovery.postgres_gone(self)

    def unknown_flood(self) -> dict[str, Any]:
        return recovery.unknown_flood(self)

    def soak(self) -> dict[str, Any]:
        capacity = self.capacity()["rps"]
        rate = capacity / 2
        seconds, window = self.p["soak_seconds"], self.p["soak_window"]
        connections = 128
        # Each connection waits `pace` ms on average before each request: connections * 1000 /
        # pace requests a second, a little less with latency added.
        pace = connections * 1000 / rate
        bookings = self.work / "booking-ids.json"
        write_booking_ids(self.settings, bookings)
        with Resources(self.top.processes, self.settings, self.top.status_url, 5.0) as res:
            run = self.statuses_wrk(seconds, connections, f"pace={pace:.2f}", f"mix={bookings}")
        baseline = (window, 2 * window)
        final = (seconds - window, seconds + 10)
        say(
            f"soak: {run['requests'] / run['seconds']:,.0f} req/s for {run['seconds']:.0f} s, "
            f"failed {run['errors'] + run['refused']:,.0f}, p99 {run['p99_ms']:.1f} ms"
        )
        return {
            "how": f"wrk -t1 -c{connections} with bench/statuses.lua's mix (75% students, 15% "
            "bookings, 4% unknown student ids, 2% unknown booking ids, 2% malformed of each, as "
            f"k6/soak.js), each connection pausing {pace:.1f} ms on average (exponential) "
            f"before each request: about half the capacity ({capacity:,.0f} 200/s, measured "
            f"in this run), for {seconds} s, through nginx to {self.default_replicas} "
            f"replica(s). Sampled every 5 s (bench/resources.py). The last {window} s are "
            f"compared with the baseline, {window} to {2 * window} s in (the first {window} s "
            "warm the caches, pools and negative cache up): memory by its median, counts by "
            "their minimum (the floor left between requests in flight, which a leak raises).",
            "runs": {"soak": {**run, "capacity_rps": capacity}},
            "resources": {
                "baseline median": res.medians(*baseline),
                "final median": res.medians(*final),
                "baseline min": res.minima(*baseline),
                "final min": res.minima(*final),
            },
            "series": res.samples,
        }


def write_booking_ids(settings: Settings, path: Path, count: int = 5_000) -> None:
    """Real booking ids for the soak's mix, written by k6/export_ids.py as for the k6 scripts."""
    subprocess.run(
        [sys.executable, str(ROOT / "k6/export_ids.py"), "--count", str(count), "--out", str(path),
         "--database-url", settings.stores.database_url],
        cwd=ROOT, check=True, timeout=120, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def clear_live_students(client: redis.Redis) -> int:
    """UNLINK the hashes of the live students version (the contract's SCAN pattern): nothing
    else, neither bookings nor {surge}:live / {surge}:meta."""
    version = parse_version(client.hget(LIVE_KEY, STUDENTS.name))
    keys = list(client.scan_iter(match=STUDENTS.version_pattern(version), count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i : i + 1000])
    return len(keys)


def reseed(client: redis.Redis, settings: Settings) -> None:
    """Back to a full Redis. The read-through write-backs may have recreated every hash with a
    few fields each, which the seeder's key count would take for a complete fill: clear the
    live version first, so that `surge-seed` sees it incomplete and refills from Postgres."""
    say("cold: refilling Redis from Postgres (surge-seed)")
    clear_live_students(client)
    env = {
        **os.environ,
        "SURGE_DATABASE_URL": settings.stores.database_url,
        "SURGE_REDIS_URL": settings.stores.redis_url,
    }
    subprocess.run(
        [str(ROOT / ".venv/bin/surge-seed"), "--no-progress"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )
    last = FIRST_STUDENT_ID + settings.dataset.students - 1
    if client.hget(*STUDENTS.live_slot(client, last)) is None:
        raise RuntimeError(f"after surge-seed, student {last} is still not in Redis")


# -- main -------------------------------------------------------------------------------------


OWN_REDIS = {"redis_cluster", "netns_ramp"}
"""Steps that start and seed Redis servers of their own: they need at most make up's Postgres."""


def check_seeded(settings: Settings, last_id: int) -> None:
    """Exit unless make up's Redis answers and holds the last student."""
    try:
        probe = redis.Redis.from_url(settings.stores.redis_url)
        seeded = probe.hget(*STUDENTS.live_slot(probe, last_id)) is not None
        probe.close()
    except redis.RedisError as e:
        sys.exit(f"Redis at {settings.stores.redis_url} does not answer ({e}): `make up` first")
    if not seeded:
        sys.exit(f"student {last_id} is not in Redis: seed first (`make up`)")


def parse_only(raw: str | None) -> list[str]:
    if not raw:
        return list(report_render.STEPS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = sorted(set(names) - set(report_render.STEPS))
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; known: {', '.join(report_render.STEPS)}")
    return [n for n in report_render.STEPS if n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, small VU counts")
    parser.add_argument("--only", help=f"comma-separated steps of: {','.join(report_render.STEPS)}")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes")
    args = parser.parse_args(argv)
    steps = parse_only(args.only)
    # A SIGTERM (timeout, CI) unwinds like Ctrl-C: the finally blocks stop what was started
    # and refill Redis.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: `make deps` installs it")
    if not K6.exists() and {"ramp", "spike"} & set(steps):
        sys.exit(f"{K6} is missing: `make deps` installs it")

    settings = Settings.from_env()
    last_id = FIRST_STUDENT_ID + settings.dataset.students - 1
    if not set(steps) <= OWN_REDIS:
        check_seeded(settings, last_id)

    date = datetime.date.today().isoformat()
    chart_dir = args.out / date
    profile = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="surge-bench-work-"))
    bench = Bench(settings, profile, work)
    command = (
        "make bench"
        if not argv and not args.quick and not args.only
        else ("python -m bench " + " ".join(sys.argv[1:] if argv is None else argv))
    )
    results: dict[str, Any] = {
        "meta": {
            "date": date,
            "command": command,
            "quick": args.quick,
            "nproc": os.cpu_count() or 1,
            "machine": [*(list(kv) for kv in machine(settings)), ["k6", k6_version(K6)]],
            "config": {
                "students": (
                    f"{settings.dataset.students:,} (ids {FIRST_STUDENT_ID:,}..{last_id:,})"
                ),
                "replicas (default)": str(bench.default_replicas),
                "nginx": "one worker, rate limit off, the project's template",
                "Granian": "one worker per replica (stack.servers.granian_command)",
                "Redis pool / backpressure": str(settings.stores.redis_pool_size),
                "wrk": f"-t1 -c{profile['connections']} -d{profile['seconds']}s",
                "rounds": str(profile["rounds"]),
                "steps": ", ".join(steps),
            },
        },
        "steps": {},
        "failures": {},
    }
    started = time.monotonic()
    try:
        for name in steps:
            say(f"step {name}")
            try:
                results["steps"][name] = getattr(bench, name)()
            except (Exception, subprocess.TimeoutExpired) as e:  # the others still run
                say(f"step {name} failed: {e}")
                results["failures"][name] = f"{type(e).__name__}: {str(e)[:500]}"
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    results["meta"]["config"]["wall time"] = f"{time.monotonic() - started:,.0f} s"

    chart_dir.mkdir(parents=True, exist_ok=True)
    (chart_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    pngs = report_render.charts(results, chart_dir)
    report = report_render.markdown(results, [f"{date}/{p.name}" for p in pngs])
    path = args.out / f"report-{date}.md"
    path.write_text(report)
    print(report)
    say(f"wrote {path} and {len(pngs)} chart(s) in {chart_dir}")
    missed = report_render.missed_assertions(results)
    for target in missed:
        say(f"ASSERTION MISSED: {target.step}: {target.name}: {target.describe()}")
    return 1 if results["failures"] or missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
