"""surge across a real network: every tier on a host of its own (stack.netns), ~1 ms apart.

One topology for the module: edge (nginx), api1 and api2 (a Granian replica each), redis and
postgres, each a network namespace on one bridge, every host's packets delayed 500 µs on the
way out; seeded over the network with the session's small dataset. The test process reaches
them from the root namespace through the bridge. The replicas' own copies are off, so that a
Redis cut has to be answered by Postgres (the copies would answer every id first).

Prerequisites (root, `ip netns`, veth, bridge, netem or iptables' NFQUEUE) fail the module
loudly: a machine that cannot build the topology is an error here, never a skip.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from polling import poll
from test_faults_under_load import RECOVERY_S, Burst, quantile

from core.contract import STUDENTS as STUDENT_RECORDS
from seeder.generate import FIRST_STUDENT_ID
from stack import netns
from stack.netns import API_PORT, PG_PORT, REDIS_PORT, Network, SurgeNet

pytestmark = pytest.mark.netns

STUDENTS, BOOKINGS = 2_000, 1_000  # tests/conftest.py's TEST_STUDENTS, TEST_BOOKINGS
ALL_IDS = list(range(FIRST_STUDENT_ID, FIRST_STUDENT_ID + STUDENTS))
MIN_RTT_MS = 1.0
CUT_S = 6.0
"""How long a host stays cut off: past nginx's read timeout (5 s), so the requests caught in
flight on a cut replica are retried on the other while it is still gone, and past the store
sockets' TCP_USER_TIMEOUT (2 s), so their connections stuck in retransmission fail meanwhile."""
STORE_503 = '"status":503'
BACK_S = 5.0
"""After the link returns: a replica answers a lookup needing Redis, and one needing Postgres,
itself, and reports both stores up, within this."""
LOOKUP_LINE = re.compile(r'^surge_lookups_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def top() -> Iterator[SurgeNet]:
    work = Path(tempfile.mkdtemp(prefix="surge-netns-"))
    with SurgeNet(
        work, STUDENTS, BOOKINGS, env={"SURGE_LOCAL_CACHE_MB": "0", "SURGE_NGINX_ACCESS_LOG": "on"}
    ) as surge:
        yield surge


def lookups(top: SurgeNet, *replicas: str) -> Counter[str]:
    """Lookup outcomes (redis_hit, fallback_hit, ...) summed over replicas, from /metrics."""
    total: Counter[str] = Counter()
    for name in replicas or top.replicas:
        text = httpx.get(f"{top.replica_url(name)}/metrics", timeout=5).text
        for outcome, value in LOOKUP_LINE.findall(text):
            total[outcome] += int(float(value))
    return total


def report(name: str, **figures: object) -> None:
    print(f"\n[netns] {name}: {figures}")


def test_same_bytes_as_on_loopback_and_hosts_1_ms_apart(
    top: SurgeNet, api_url: str, pg: Any
) -> None:
    """Through nginx on edge, /students/{id} and /bookings/{id} answer exactly the bytes a
    replica on loopback (the session's stores, the same seed) answers; host to host, a TCP
    connect (one round trip) takes >= 1 ms."""
    booking_ids = [r[0] for r in pg.execute("SELECT id FROM bookings ORDER BY id LIMIT 20")]
    paths = [f"/students/{sid}" for sid in ALL_IDS[:: STUDENTS // 40]]
    paths += [f"/bookings/{bid}" for bid in booking_ids]
    with httpx.Client(base_url=top.url, timeout=10) as far, httpx.Client(base_url=api_url) as near:
        for path in paths:
            there, here = far.get(path), near.get(path)
            assert there.status_code == here.status_code == 200, path
            assert there.content == here.content, path
            assert there.headers["etag"] == here.headers["etag"], path
    rtt = {
        "edge-api1": top.net.connect_ms("edge", "api1", API_PORT),
        "api2-redis": top.net.connect_ms("api2", "redis", REDIS_PORT),
        "api1-postgres": top.net.connect_ms("api1", "postgres", PG_PORT),
    }
    report("round trips (ms)", delay=top.net.delay, **{k: round(v, 2) for k, v in rtt.items()})
    assert all(ms >= MIN_RTT_MS for ms in rtt.values()), rtt
    assert all(ms < 20 for ms in rtt.values()), rtt  # a delay, not a broken link


def test_replica_host_cut_off_costs_no_request(top: SurgeNet, pg: Any) -> None:
    """api1 (the replica nginx fills first) cut off mid-burst for CUT_S: every request of the
    burst answers 200 (from api2 after nginx's retry while api1 is gone), and within BACK_S of
    its return api1 itself answers from Redis and from Postgres, both stores up."""
    before = lookups(top, "api2")
    with Burst(top.url, ALL_IDS[:500], threads=4) as burst:
        burst.wait_done(100)
        top.net.cut("api1")
        cut_at = time.monotonic()
        try:
            poll(lambda: time.monotonic() > cut_at + CUT_S, CUT_S + 5, "cut over")
        finally:
            top.net.restore("api1")
        back = poll(lambda: _serves_from_both_stores(top, "api1"), BACK_S, "api1 whole again")
        burst.wait_done(burst.done + 50)
    assert burst.errors == [], burst.errors[:5]
    assert burst.statuses() == Counter({200: burst.done})
    took_over = lookups(top, "api2")["redis_hit"] - before["redis_hit"]
    assert took_over > 0, "api2 answered nothing: api1 was not cut off"
    # The requests in flight on api1 at the cut wait out nginx's read timeout (5 s) before
    # their retry on api2: the whole burst's, not a window's (none may start in the cut).
    lat = burst.latencies()
    report(
        "api1 cut off",
        requests=burst.done,
        failed=0,
        slower_than_1s=sum(s > 1 for s in lat),
        api2_answered=took_over,
        p50_ms=round(quantile(lat, 0.5) * 1000, 1),
        p99_ms=round(quantile(lat, 0.99) * 1000, 1),
        max_ms=round(lat[-1] * 1000, 1),
        api1_whole_again_s=round(back, 2),
    )


def _serves_from_both_stores(top: SurgeNet, name: str) -> bool:
    """The replica, asked directly: /ready says both stores are up, a lookup of a record Redis
    holds is a Redis hit, and one of a record taken out of Redis is read from Postgres."""
    url = top.replica_url(name)
    try:
        ready = httpx.get(f"{url}/ready", timeout=1).json()
        if ready["components"] != {"redis": "up", "postgres": "up", "copy": "off"}:
            return False
        probe = next(_PROBES)
        before = lookups(top, name)
        with redis.Redis.from_url(top.redis_url) as rds:
            rds.hdel(*STUDENT_RECORDS.live_slot(rds, probe))
        held = httpx.get(f"{url}/students/{ALL_IDS[0]}", timeout=1)
        missing = httpx.get(f"{url}/students/{probe}", timeout=1)
    except httpx.HTTPError:
        return False
    after = lookups(top, name)
    return (
        held.status_code == missing.status_code == 200
        and after["redis_hit"] > before["redis_hit"]
        and after["fallback_hit"] > before["fallback_hit"]
    )


_PROBES = itertools.cycle(ALL_IDS[1_500:])


def test_redis_host_cut_off_falls_back_then_returns(top: SurgeNet) -> None:
    """The redis host cut off mid-burst for CUT_S: every lookup answers 200 (from Postgres, over
    the network), and within RECOVERY_S of the link's return the replicas read Redis again."""
    before = lookups(top)
    with Burst(top.url, ALL_IDS[:500] + ALL_IDS[1_000:1_500], threads=4) as burst:
        burst.wait_done(100)
        top.net.cut("redis")
        cut_at = time.monotonic()
        try:
            poll(lambda: time.monotonic() > cut_at + CUT_S, CUT_S + 5, "cut over")
        finally:
            top.net.restore("redis")
        returned = time.monotonic()
        hits = lookups(top)["redis_hit"]
        back = poll(lambda: lookups(top)["redis_hit"] >= hits + 50, RECOVERY_S + 5, "on Redis")
        burst.wait_done(burst.done + 50)
    # Postgres is up: 200s; a proper 503 (the bounded pool full) is allowed, a 500 never.
    unavailable = [e for e in burst.errors if e.startswith("503: ") and STORE_503 in e]
    assert len(unavailable) == len(burst.errors), burst.errors[:5]
    assert burst.statuses() == Counter({200: burst.done - len(unavailable), 503: len(unavailable)})
    fallback = lookups(top)["fallback_hit"] - before["fallback_hit"]
    assert fallback > 0, "no lookup needed Postgres: Redis was not cut off"
    assert back <= RECOVERY_S, f"back on Redis {back:.1f} s after the link returned"
    lat = burst.latencies(cut_at, returned)
    report(
        "redis cut off",
        requests=burst.done,
        started_during_cut=len(lat),
        proper_503=len(unavailable),
        postgres_answered=fallback,
        p50_ms=round(quantile(lat, 0.5) * 1000, 1),
        p99_ms=round(quantile(lat, 0.99) * 1000, 1),
        max_ms=round(lat[-1] * 1000, 1),
        back_on_redis_s=round(back, 2),
    )


def test_each_run_leaves_nothing_and_sweeps_a_dead_runs_leftovers() -> None:
    """A Network of its own: hosts 1 ms apart, gone without a trace on exit; and a leftover
    namespace and link of a run whose owner died are removed by sweep(), while a live run's
    (the module's topology) are not."""
    with Network(["a", "b"]) as net:
        listener = net.popen(net["b"], ["python3", "-c", _LISTEN.format(net["b"].address)])
        poll(lambda: _listening(net, "b"), 10, "listener on b")
        assert net.connect_ms("a", "b", 9000, count=5) >= MIN_RTT_MS
        names = [h.netns for h in net.hosts.values()] + [net.bridge]
    assert listener.poll() is not None
    assert not _existing(names), _existing(names)

    dead = subprocess.Popen(["true"])
    dead.wait()
    run_id = "fffff"
    netns.STATE_DIR.mkdir(parents=True, exist_ok=True)
    state = {"pid": dead.pid, "start_time": 0}
    (netns.STATE_DIR / f"{run_id}.json").write_text(json.dumps(state))
    leftover = [f"{netns.PREFIX}{run_id}-x", f"{netns.PREFIX}{run_id}0"]
    subprocess.run(["ip", "netns", "add", leftover[0]], check=True)
    peer = ["peer", "name", leftover[1] + "p"]
    subprocess.run(["ip", "link", "add", leftover[1], "type", "veth", *peer], check=True)
    live = _own_runs()
    assert run_id in netns.sweep()
    assert not _existing(leftover), _existing(leftover)
    assert _own_runs() == live - {run_id}


_LISTEN = (
    "import socket,time\n"
    "s=socket.socket(); s.bind(({0!r},9000)); s.listen(64)\n"
    "while True: s.accept()[0].close()\n"
)


def _listening(net: Network, name: str) -> bool:
    done = subprocess.run([*net[name].prefix, "ss", "-Hltn", "sport = :9000"],
                          capture_output=True, text=True)  # fmt: skip
    return bool(done.stdout.strip())


def _existing(names: list[str]) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [n for n in names if re.search(rf"(^|\s){re.escape(n)}[\s:@]", out, re.M)]


def _own_runs() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {m[1] for m in re.finditer(rf"^{netns.PREFIX}([0-9a-f]{{5}})-", out, re.M)}
