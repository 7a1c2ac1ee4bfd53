"""The recovery steps of `make bench`, each under load through nginx, each asserted (the targets
are in bench/report_render.py):

  redis_empty    Redis emptied (FLUSHALL) at half capacity, with the replicas' own copies on
                 (the default) and off: nothing fails, the keeper restores the live versions and
                 the whole dataset, lookups come back to Redis (or the copy); and once more at
                 full load, where the capacity left while the keeper refills never drops below
                 that half-capacity load.
  postgres_gone  Postgres stopped for a minute at half capacity, the copies off (so that lookups
                 go through Redis and misses reach Postgres): cached lookups never fail, misses
                 get 503 + Retry-After within 1 s, full service within 5 s of its return, the
                 replicas' memory and tasks flat.
  unknown_flood  distinct unknown ids at full capacity: no lookup reaches Postgres, and a
                 newcomer's lookup of a known id is as fast as under known ids at full capacity.
"""

from __future__ import annotations

import http.client
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

import redis

from bench import say
from bench.report_render import FULL_LOAD
from bench.resources import Periodic, Probe, Resources, scrape, wait_copies
from bench.topology import Topology
from core.contract import LIVE_KEY, MARKER_KEY, STUDENTS
from core.settings import Settings
from seeder.generate import FIRST_STUDENT_ID
from stack.launcher import Stack
from stack.servers import HOST

POSTGRES_LOOKUPS = ("fallback_hit", "not_found", "unavailable")
"""Lookup outcomes that asked Postgres."""
WITHOUT_POSTGRES = ("local_hit", "redis_hit", "not_in_live_version", "negative_cache_hit")
LARGEST_ID = 999_999_999  # the largest registration number the API accepts (9 digits)
PACED_CONNECTIONS = 128
MISSES = 1_000
"""Student ids taken out of Redis for the Postgres step: the probe asks for each once."""
FLOOD_ROUNDS = 2
"""Rounds of each kind in unknown_flood (known ids, unknown ids, alternating)."""
FLOOD_PROBE_INTERVAL_S = 0.02
"""The newcomer's pause between lookups in unknown_flood: ~40 a second, ~1,000 per kind."""


class Bench(Protocol):
    """What these steps use of bench/report.py's Bench."""

    settings: Settings
    p: Mapping[str, Any]
    last_id: int

    @property
    def top(self) -> Topology: ...

    def capacity(self) -> dict[str, Any]: ...
    def capacity_connections(self) -> int: ...
    def statuses_wrk(
        self, seconds: int, connections: int, *args: object, threads: int = 1,
        ids: tuple[int, int] | None = None,
    ) -> dict[str, Any]: ...  # fmt: skip


# -- samplers ---------------------------------------------------------------------------------

_OUTCOME = re.compile(r'outcome="(\w+)"')


def lookup_totals(ports: list[int]) -> Counter[str]:
    """Student and booking lookups by outcome, summed over the replicas (their /metrics)."""
    total: Counter[str] = Counter()
    for port in ports:
        for key, value in scrape(port).items():
            if key.startswith("surge_lookups_total{"):
                match = _OUTCOME.search(key)
                if match:
                    total[match.group(1)] += int(value)
    return total


class Outcomes(Periodic):
    """Every second, the lookups the replicas answered since the last, by outcome."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.interval = 1.0
        self.start = time.monotonic()
        self.totals: list[tuple[float, Counter[str]]] = []

    def tick(self) -> None:
        self.totals.append((time.monotonic() - self.start, lookup_totals(self.ports)))

    def per_second(self) -> list[dict[str, float]]:
        out = []
        for (t0, c0), (t1, c1) in zip(self.totals, self.totals[1:], strict=False):
            dt = max(t1 - t0, 1e-6)
            # A replica that restarted counts from 0 again: no negative rates.
            rates = {k: max(0, c1[k] - c0[k]) / dt for k in set(c0) | set(c1)}
            out.append({"t": round(t1, 1), **rates, "all": sum(rates.values())})
        return out


class LiveWatch(Periodic):
    """Every 0.25 s: whether Redis names a live students version that the seeder marked whole
    (its `{surge}:meta` entry for that very version): the live versions, metadata and records
    all back."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.interval = 0.25
        self.start = time.monotonic()
        self.points: list[tuple[float, bool]] = []

    def tick(self) -> None:
        whole = False
        try:
            live = self.client.hget(LIVE_KEY, STUDENTS.name)
            marker = self.client.hget(MARKER_KEY, STUDENTS.name)
            whole = (
                live is not None
                and marker is not None
                and (
                    f'"version":{int(live)}'
                    in (marker.decode() if isinstance(marker, bytes) else marker).replace(" ", "")
                )
            )
        except (redis.RedisError, ValueError):
            pass
        self.points.append((time.monotonic() - self.start, whole))

    def whole_again(self, since: float) -> float | None:
        """Seconds after `since` until Redis was whole again (and stayed so), else None."""
        after = [(t, whole) for t, whole in self.points if t >= since]
        last_broken = max((t for t, whole in after if not whole), default=None)
        if last_broken is None:
            return 0.0
        later = [t for t, whole in after if whole and t > last_broken]
        return later[0] - since if later else None


class MissProbe(Periodic):
    """Every 0.1 s one GET, on a new connection, of the next id in `ids` (each asked once:
    an answer from Postgres is written back, and the next ask would be a Redis hit)."""

    def __init__(self, url: str, ids: list[int]) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.ids = iter(ids)
        self.interval = 0.1
        self.start = time.monotonic()
        self.answers: list[dict[str, Any]] = []

    def tick(self) -> None:
        sid = next(self.ids, None)
        if sid is None:
            return
        started = time.monotonic()
        answer: dict[str, Any] = {"t": started - self.start, "status": 0, "retry_after": None}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", f"/students/{sid}")
            resp = conn.getresponse()
            body = resp.read()
            answer.update(
                status=resp.status,
                retry_after=resp.getheader("retry-after"),
                problem=f'"status":{resp.status}'.encode() in body,
            )
        except OSError:
            pass
        finally:
            conn.close()
        answer["ms"] = (time.monotonic() - started) * 1000
        self.answers.append(answer)


def _in_thread(work: Callable[[], dict[str, Any]]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out.update(work())
        except Exception as e:  # re-raised by the caller once the thread is joined
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def tasks_floor(res: Resources, since: float, until: float) -> float:
    """The fewest tasks of all replicas together in any one sample from `since` to `until`."""
    totals = [
        sum(v for k, v in point.items() if k.startswith("api-") and k.endswith(" tasks"))
        for point in res.samples
        if since <= point["t"] <= until
    ]
    return min(totals, default=0.0)


def _joined(thread: threading.Thread, out: dict[str, Any]) -> dict[str, Any]:
    thread.join()
    if "error" in out:
        raise out["error"]
    return out


def _replica_ports(top: Topology) -> list[int]:
    return sorted(top.processes()[1].values())


def _pace(connections: int, rate: float) -> str:
    """statuses.lua's pace for `connections` paced connections to offer about `rate` a second."""
    return f"pace={connections * 1000 / rate:.2f}"


# -- Redis emptied ----------------------------------------------------------------------------


def redis_empty(bench: Bench) -> dict[str, Any]:
    seconds, flush_at = bench.p["recovery_seconds"], bench.p["recovery_fault_at"]
    capacity = bench.capacity()["rps"]
    paced: tuple[int, str | None] = (PACED_CONNECTIONS, _pace(PACED_CONNECTIONS, capacity / 2))
    # A paced closed loop shows what a fixed crowd gets; how much the refill leaves to serve
    # with needs a load that takes all of it, as the capacity run does.
    full: tuple[int, str | None] = (bench.capacity_connections(), None)
    copy_off = {"SURGE_LOCAL_CACHE_MB": "0"}
    client = redis.Redis.from_url(bench.settings.stores.redis_url, socket_timeout=5)
    runs: dict[str, dict[str, Any]] = {}
    figures: dict[str, dict[str, float | None]] = {}
    notes = []
    try:
        for label, env, (conns, pace) in (
            ("copy on", {}, paced),
            (FULL_LOAD, {}, full),
            ("copy off", copy_off, paced),
        ):
            bench.top.launcher("up", **env)
            ports = _replica_ports(bench.top)
            wait_copies(ports)
            with Outcomes(ports) as outcomes, LiveWatch(client) as live:
                args = [pace] if pace else []
                thread, out = _in_thread(partial(bench.statuses_wrk, seconds, conns, *args))
                time.sleep(flush_at)
                client.flushall()
                flushed = time.monotonic() - outcomes.start
                live_flushed = time.monotonic() - live.start
                say(f"redis_empty ({label}): FLUSHALL at {flushed:.1f} s")
                run = _joined(thread, out)
            # Whole seconds inside the load only: wrk's first and last seconds are partial.
            series = [p for p in outcomes.per_second() if 1.5 <= p["t"] <= seconds - 0.5]
            before = [p["all"] for p in series if p["t"] <= flushed]
            after = [p for p in series if p["t"] > flushed]
            load = statistics.median(before) if before else 0.0

            def share(point: dict[str, float]) -> float:
                served = sum(point.get(k, 0.0) for k in ("local_hit", "redis_hit"))
                return served / point["all"] if point["all"] else 1.0

            broken = [p["t"] for p in after if share(p) < 0.90]
            back_90 = (max(broken) - flushed) if broken else 0.0
            whole = live.whole_again(live_flushed)
            figures[label] = {
                "failed": float(run["other"] + run["refused_bare"] + run["socket_errors"]
                                + run["refused"]),
                "served_without_postgres_90_s": back_90,
                "whole_again_s": whole,
                "lowest_rate_vs_load": (min(p["all"] for p in after) / load) if after and load
                else None,
                "lowest_rate_vs_half_capacity": (min(p["all"] for p in after) / (capacity / 2))
                if after else None,
            }  # fmt: skip
            runs[label] = {**run, "capacity_rps": capacity}
            notes.append(_timeline(label, series, flushed, share))
            say(f"redis_empty ({label}): {figures[label]}")
    finally:
        bench.top.launcher("up")  # the copies back on
        client.close()
    return {
        "how": f"wrk -t1 -c{PACED_CONNECTIONS} (bench/statuses.lua, random students), each "
        f"connection paced to offer about half the capacity ({capacity:,.0f} 200/s, measured in "
        f"this run) for {seconds} s through nginx; Redis emptied with FLUSHALL {flush_at} s in, "
        "once with the replicas' own copies on (the default) and once with them off "
        "(SURGE_LOCAL_CACHE_MB=0, so that every lookup needs Redis); and once more with the "
        f"copies on at full load (wrk -t1 -c{full[0]} unpaced, as the capacity run), where each "
        "second's lookups are the capacity the refill left. Nobody acts: the "
        "redis-keeper of `make up` (surge-seed --watch) refills Redis from Postgres. The "
        "replicas' lookup outcomes every second (their /metrics); Redis checked every 0.25 s "
        "for a live version the seeder marked whole. Versions are never mixed: the refill is a "
        "new version switched atomically (tests/test_keeper.py, tests/test_reseed.py).",
        "runs": runs,
        "figures": figures,
        "notes": notes,
    }


def _timeline(
    label: str,
    series: list[dict[str, float]],
    fault: float,
    share: Callable[[dict[str, float]], float],
) -> str:
    """A per-5-second table of who answered, around the fault."""
    rows = [f"Lookups a second ({label}), t = seconds since the load started, fault at "
            f"{fault:.0f} s:", "", "| t | lookups/s | copy | Redis | Postgres | 503 | "
            "served without Postgres |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for point in series[::5]:
        rows.append(
            f"| {point['t']:.0f} | {point['all']:,.0f} | {point.get('local_hit', 0):,.0f} | "
            f"{point.get('redis_hit', 0):,.0f} | {point.get('fallback_hit', 0):,.0f} | "
            f"{point.get('unavailable', 0):,.0f} | {share(point):.0%} |"
        )
    return "\n".join(rows)


# -- Postgres gone ----------------------------------------------------------------------------


def make_up_postgres(settings: Settings) -> Stack:
    """`make up`'s launcher, when it runs the Postgres these benchmarks use."""
    launcher = Stack()
    proc = launcher.process("postgres")
    port = launcher.layout.pg_port
    if proc is None or not proc.live or f":{port}/" not in settings.stores.database_url:
        raise RuntimeError(
            "postgres_gone stops `make up`'s own Postgres: run `make up` (not SURGE_DATABASE_URL)"
        )
    return launcher


def postgres_gone(bench: Bench) -> dict[str, Any]:
    launcher = make_up_postgres(bench.settings)
    outage, fault_at = bench.p["outage_seconds"], bench.p["recovery_fault_at"]
    seconds = fault_at + outage + 15
    connections = PACED_CONNECTIONS
    misses = list(range(bench.last_id - MISSES + 1, bench.last_id + 1))
    cached = (FIRST_STUDENT_ID, bench.last_id - MISSES)
    client = redis.Redis.from_url(bench.settings.stores.redis_url, socket_timeout=5)
    bench.top.launcher("up", SURGE_LOCAL_CACHE_MB="0")
    try:
        for sid in misses:
            client.hdel(*STUDENTS.live_slot(client, sid))
        ports = _replica_ports(bench.top)
        # Half of what this configuration serves: with the copies off every lookup pays a
        # Redis round trip, so the copies-on capacity would saturate the cores.
        unpaced = bench.capacity_connections()
        bench.statuses_wrk(2, unpaced, ids=cached)  # warm-up
        capacity = bench.statuses_wrk(bench.p["seconds"], unpaced, ids=cached)["rps"]
        say(f"postgres_gone: the copies off serve {capacity:,.0f} req/s")
        with (
            Resources(bench.top.processes, bench.settings, bench.top.status_url, 1.0) as res,
            MissProbe(bench.top.url, misses) as probe,
        ):
            thread, out = _in_thread(
                lambda: bench.statuses_wrk(
                    seconds,
                    connections,
                    _pace(connections, capacity / 2),
                    ids=cached,
                )
            )
            time.sleep(fault_at)
            launcher.supervisor.stop("postgres")
            down_at = probe_down = time.monotonic() - probe.start
            res_down = res.elapsed()
            say(f"postgres_gone: Postgres stopped at {down_at:.1f} s, for {outage} s")
            time.sleep(outage)
            launcher.supervisor.start("postgres")
            ready = launcher.postgres().ready
            while not ready():
                time.sleep(0.05)
            back_at, res_back = time.monotonic() - probe.start, res.elapsed()
            full = _full_service(ports, misses[-100:], time.monotonic())
            say(f"postgres_gone: back at {back_at:.1f} s, full service after {full:.2f} s")
            run = _joined(thread, out)
    finally:
        bench.top.launcher("up")
        client.close()
    during = [a for a in probe.answers if probe_down + 0.5 <= a["t"] <= back_at - 0.5]
    proper = [a for a in during if a["status"] == 503 and a["retry_after"] and a.get("problem")]
    before = res.medians(2, res_down)
    within = res.maxima(res_down, res_back)
    after = res.medians(res_back + 3, res.elapsed())
    figures = {
        "cached_failed": float(
            run["other"] + run["refused_bare"] + run["socket_errors"] + run["refused"]
        ),
        "misses_during": float(len(during)),
        "misses_not_a_proper_503": float(len(during) - len(proper)),
        "slowest_503_ms": max((a["ms"] for a in during), default=0.0),
        "full_service_s": full,
    }
    # Tasks move with the requests in flight at each sample, and nginx shifts the load between
    # the replicas: what a leak leaves behind raises the floor of all replicas' tasks together.
    floor_before, floor_after = res.minima(2, res_down), res.minima(res_back + 3, res.elapsed())
    figures["replicas' tasks before (min)"] = tasks_floor(res, 2, res_down)
    figures["replicas' tasks after (min)"] = tasks_floor(res, res_back + 3, res.elapsed())
    for key in before:
        if key.startswith("api-") and key.split()[-1] == "rss_mb":
            figures[f"{key} before (median)"] = before[key]
            figures[f"{key} during (max)"] = within.get(key, 0.0)
            figures[f"{key} after (median)"] = after.get(key, 0.0)
        elif key.startswith("api-") and key.split()[-1] == "tasks":
            figures[f"{key} before (fewest)"] = floor_before[key]
            figures[f"{key} during (max)"] = within.get(key, 0.0)
            figures[f"{key} after (fewest)"] = floor_after.get(key, 0.0)
    say(f"postgres_gone: {figures}")
    return {
        "how": f"wrk -t1 -c{connections} (bench/statuses.lua) over students "
        f"{FIRST_STUDENT_ID:,}..{bench.last_id - MISSES:,}, paced to about half the capacity "
        f"of this configuration ({capacity:,.0f} 200/s, wrk -c{unpaced} "
        f"unpaced just before) for {seconds} s through nginx, the replicas' own copies off "
        f"(SURGE_LOCAL_CACHE_MB=0): those records come from Redis. The last {MISSES:,} "
        "students were taken out of Redis first: a probe asked for one of them every 0.1 s on "
        f"a new connection (each once). `make up`'s Postgres stopped under supervisord "
        f"{fault_at} s in (every session cut), started again {outage} s later; then each "
        "replica asked directly for a miss until it answered 200 (full service). Memory and "
        "tasks sampled every second (bench/resources.py): before the outage and from 3 s after "
        "its end, memory's medians and the floor of all replicas' tasks together (the fewest "
        "in any sample: the rest are requests in flight), the maximum during it.",
        "runs": {"cached lookups": {**run, "capacity_rps": capacity}},
        "figures": {"postgres gone": figures},
    }


def _full_service(ports: list[int], ids: list[int], since: float, timeout: float = 30.0) -> float:
    """Seconds from `since` until every replica answered a miss with 200."""
    pending, fresh = list(ports), iter(ids)
    deadline = since + timeout
    while pending and time.monotonic() < deadline:
        port = pending[0]
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", f"/students/{next(fresh, ids[-1])}")
            if conn.getresponse().status == 200:
                pending.pop(0)
                continue
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    return time.monotonic() - since if not pending else float("inf")


# -- a flood of unknown ids -------------------------------------------------------------------


def unknown_flood(bench: Bench) -> dict[str, Any]:
    bench.top.launcher("up")
    seconds, conns = bench.p["flood_seconds"], bench.capacity_connections()
    ports = _replica_ports(bench.top)
    wait_copies(ports)
    runs: dict[str, dict[str, Any]] = {}
    asked_postgres: dict[str, float] = {}
    windows: dict[str, list[tuple[float, float]]] = {}
    cases = (
        ("known ids", (FIRST_STUDENT_ID, bench.last_id), ()),
        ("unknown ids", (bench.last_id + 1, LARGEST_ID), ("expect=404",)),
    )
    bench.statuses_wrk(2, conns)  # warm-up
    # The phases alternate, FLOOD_ROUNDS of each, and the probe's answers of each phase are
    # pooled: the machine's drift falls on both alike, and the p99 rests on ~1,000 answers.
    with Probe(bench.top.url, bench.last_id, interval=FLOOD_PROBE_INTERVAL_S) as probe:
        for label, ids, args in [case for _ in range(FLOOD_ROUNDS) for case in cases]:
            before = lookup_totals(ports)
            started = time.monotonic()
            ran = bench.statuses_wrk(seconds, conns, *args, ids=ids)
            windows.setdefault(label, []).append((started, time.monotonic()))
            after = lookup_totals(ports)
            asked = float(sum(after[k] - before[k] for k in POSTGRES_LOOKUPS))
            asked_postgres[label] = asked_postgres.get(label, 0.0) + asked
            runs[f"{label}, round {len(windows[label])}"] = ran
            say(f"unknown_flood {label}: {ran['requests'] / seconds:,.0f} req/s, "
                f"Postgres asked {asked:.0f} times")  # fmt: skip
        probes = {label: probe.pooled(spans) for label, spans in windows.items()}
    known = probes["known ids"].get("200", {})
    flood = probes["unknown ids"].get("200", {})
    known_requests = _requests(runs, "known ids")
    return {
        "how": f"wrk -t1 -c{conns} (bench/statuses.lua) through nginx for {seconds} s each, "
        f"{FLOOD_ROUNDS} rounds of: random known students, then distinct random ids above the "
        f"last student ({bench.last_id + 1:,}..{LARGEST_ID:,}: each a first-time unknown id, "
        "which a per-id negative cache cannot absorb). Meanwhile a newcomer looked up a random "
        f"known student every {FLOOD_PROBE_INTERVAL_S * 1000:.0f} ms on a new connection (the "
        "probe; its answers pooled per kind of round). Postgres asked = the replicas' lookups "
        "with an outcome that reads Postgres (fallback_hit, not_found, unavailable).",
        "runs": runs,
        "probe": probes,
        "figures": {
            "flood": {
                "postgres_asked_known": asked_postgres["known ids"],
                "postgres_asked_unknown": asked_postgres["unknown ids"],
                "answers_vs_known": _requests(runs, "unknown ids") / known_requests
                if known_requests
                else 0.0,
                "probe_p99_known_ms": known.get("p99_ms", 0.0),
                "probe_p99_flood_ms": flood.get("p99_ms", 0.0),
            }
        },
    }


def _requests(runs: Mapping[str, Mapping[str, Any]], kind: str) -> float:
    """Requests of every round of one kind ("known ids", "unknown ids") together."""
    return float(sum(run["requests"] for label, run in runs.items() if label.startswith(kind)))


__all__ = ["postgres_gone", "redis_empty", "unknown_flood"]
