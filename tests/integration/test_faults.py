"""Redis or Postgres gone: the API degrades as promised and recovers by itself."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from replica import child_env, replica
from silent_proxy import SilentProxy

import seeder
from api.lookup import POOL_CHECK_ROUNDS
from core.contract import STUDENTS
from stack.servers import free_port, granian_command, log_tail, wait_for

ROOT = Path(__file__).resolve().parents[2]

# The settings' Redis timeout is 0.1 s; a fallback must not take redis-py's default 5 s.
FALLBACK_BOUND_S = 0.5
# psycopg_pool waits SURGE_PG_WAIT_TIMEOUT (0.5 s) for a connection, then 503.
UNAVAILABLE_BOUND_S = 1.5
RECOVERY_BOUND_S = 5.0
# Two reads of the live versions (0.5 s apart) and a Redis timeout.
WATCHER_BOUND_S = 1.5
# A burst against a replica whose Redis goes silent mid-way: 8 keep-alive clients, 1,200
# requests; each lookup then waits out the 0.1 s Redis timeout and reads Postgres.
SILENT_BURST, SILENT_THREADS = 1_200, 8
SILENT_SLOWEST_S = 1.0
RESET_CLIENTS = 16
REDIS_HIT_LINE = re.compile(r'^surge_lookups_total\{[^}]*outcome="redis_hit"[^}]*\} (\S+)$', re.M)


def timed_get(fresh, path):
    started = time.monotonic()
    response = fresh.get(path)
    return response, time.monotonic() - started


def poll_until(condition, timeout: float) -> float:
    """Seconds until condition() held; fails the test past timeout (bounded, no fixed sleeps)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_redis_down_falls_back_to_postgres_then_returns(fresh, settings, redis_server):
    ids = range(10_100, 10_130)
    expected = {i: fresh.get(f"/students/{i}").content for i in ids}
    redis_server.stop()
    try:
        for i in ids:
            response, elapsed = timed_get(fresh, f"/students/{i}")
            assert response.status_code == 200
            assert response.content == expected[i]
            assert elapsed < FALLBACK_BOUND_S, f"fallback took {elapsed:.3f} s"
        ready = fresh.get("/ready")  # still answering: degraded, not out of service
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["components"] == {"redis": "down", "postgres": "up", "copy": "off"}
    finally:
        redis_server.start()

    # Redis came back empty (no persistence in tests): once the circuit closes again, a lookup
    # is written back, which shows the API is using Redis again.
    rds = redis.Redis.from_url(settings.stores.redis_url)
    probe_id = 10_200

    def back_on_redis() -> bool:
        assert fresh.get(f"/students/{probe_id}").status_code == 200
        return rds.hget(*STUDENTS.live_slot(rds, probe_id)) is not None

    poll_until(back_on_redis, RECOVERY_BOUND_S)
    assert fresh.get("/ready").status_code == 200
    rds.close()
    seeder.seed(settings)  # refill what the restart dropped, for the tests that follow


def test_postgres_down_serves_cached_and_503s_uncached(fresh, settings, postgres_server):
    cached_id, uncached_id = 10_300, 10_301
    rds = redis.Redis.from_url(settings.stores.redis_url)
    assert fresh.get(f"/students/{cached_id}").status_code == 200
    rds.hdel(*STUDENTS.live_slot(rds, uncached_id))
    postgres_server.stop()
    try:
        response, _ = timed_get(fresh, f"/students/{cached_id}")
        assert response.status_code == 200
        response, elapsed = timed_get(fresh, f"/students/{uncached_id}")
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert elapsed < UNAVAILABLE_BOUND_S, f"503 took {elapsed:.3f} s"
        assert fresh.get("/ready").json()["components"]["postgres"] == "down"
    finally:
        postgres_server.start()

    poll_until(lambda: fresh.get(f"/students/{uncached_id}").status_code == 200, RECOVERY_BOUND_S)
    with psycopg.connect(settings.stores.database_url) as conn:
        assert (
            conn.execute("SELECT count(*) FROM students").fetchone()[0] == settings.dataset.students
        )
    rds.close()


def test_redis_timeouts_fall_back_without_opening_the_circuit(settings):
    """A timeout may be the replica's own (a starved event loop reads the reply late): it
    falls back for that request only. Opening the circuit on it sent every request to the
    bounded Postgres pool at once (docs/reliability.md, "Faults under load"). A refused
    connection is certainly Redis's: it opens the circuit."""
    import asyncio

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from api.lookup import Lookup
    from api.metrics import Metrics

    async def scenario(fault: Exception) -> tuple[bool, int]:
        lookup = Lookup(settings.stores, settings.api, Metrics())
        calls = [0]

        async def hget(*_args):
            calls[0] += 1
            raise fault

        async def from_postgres(*_args):
            return b"{}"

        async def write_back(*_args):
            return None

        lookup.redis.hget = hget
        lookup.from_postgres = from_postgres
        lookup._write_back = write_back
        try:
            for i in range(10):
                assert await lookup.get(STUDENTS, 10_000 + i) == b"{}"
        finally:
            await lookup.redis.aclose()
        return lookup.breaker.is_open, calls[0]

    assert asyncio.run(scenario(RedisTimeoutError("slow"))) == (False, 10)
    assert asyncio.run(scenario(TimeoutError())) == (False, 10)
    opened, calls = asyncio.run(scenario(RedisConnectionError("refused")))
    assert opened and calls == settings.stores.redis_breaker_failures


def test_a_full_redis_refuses_write_backs_at_no_cost(fresh, rds):
    """maxmemory reached with noeviction (both launchers' policy): Redis refuses the write-back
    of a miss; the request is answered from Postgres all the same, the refusal is counted, and
    the circuit stays closed (Redis is not failing: reads still work)."""
    student = 10_401
    key, field = STUDENTS.live_slot(rds, student)
    expected = fresh.get(f"/students/{student}").content
    assert rds.hdel(key, field) == 1
    lookup = fresh.app.state.lookup
    refused = lookup.metrics.redis_refused_write.value
    policy = rds.config_get("maxmemory-policy")["maxmemory-policy"]
    rds.config_set("maxmemory-policy", "noeviction")
    rds.config_set("maxmemory", "1")  # anything already stored is over it
    try:
        for _ in range(5):
            response = fresh.get(f"/students/{student}")
            assert response.status_code == 200 and response.content == expected
        assert lookup.metrics.redis_refused_write.value == refused + 5
        assert lookup.breaker.failures == 0 and not lookup.breaker.is_open
        assert rds.hget(key, field) is None
        assert fresh.get("/students/10000").status_code == 200  # reads go on as before
    finally:
        rds.config_set("maxmemory", "0")
        rds.config_set("maxmemory-policy", policy)
    assert fresh.get(f"/students/{student}").content == expected
    assert rds.hget(key, field) == expected  # room again: written back


def test_ready_is_503_only_when_nothing_can_answer(fresh, settings, redis_server, postgres_server):
    """Both stores gone and no complete copy (the session's copy is off): 503 "not ready", the
    one state in which an orchestrator should stop sending this replica requests."""
    redis_server.stop()
    postgres_server.stop()
    try:
        ready = fresh.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"
        assert ready.headers["content-type"].startswith("application/json")
    finally:
        postgres_server.start()
        redis_server.start()
    poll_until(lambda: fresh.get("/ready").json()["status"] == "ready", RECOVERY_BOUND_S)
    seeder.seed(settings)  # Redis came back empty


def test_a_silent_postgres_does_not_stop_the_live_version_watcher(
    settings, seeded, postgres_server, restore
):
    """Postgres behind a partition (no answer, no reset: SilentProxy) while the replica checks
    its idle Postgres connections: the watcher of the live versions must go on, so a reseed
    that switches {surge}:live meanwhile is followed within a refresh or two."""
    with SilentProxy(postgres_server.port) as proxy:
        url = settings.stores.database_url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        with replica(settings, database_url=url) as client:
            lookup = client.app.state.lookup
            assert client.get("/students/10010").status_code == 200
            before = dict(lookup.live)
            proxy.silence()
            try:
                # Past a round of the idle-connection check (POOL_CHECK_ROUNDS reads of the
                # live versions), which now waits on the silent server.
                time.sleep(POOL_CHECK_ROUNDS * settings.api.live_refresh_interval + 0.5)
                seeder.seed(settings.replace(seed=settings.dataset.seed + 1))  # not via the proxy
                switched = poll_until(lambda: lookup.live != before, WATCHER_BOUND_S)
                answer = client.get("/students/10011")  # from the new version in Redis
                assert answer.status_code == 200, answer.text
            finally:
                proxy.resume()
    print(f"\nlive versions followed {switched:.2f} s after the switch, Postgres silent")


@contextlib.contextmanager
def granian_replica(settings, redis_url: str, log: Path) -> Iterator[str]:
    """A real replica (Granian, as `make up` runs it) over the session's Postgres and the given
    Redis, logging to `log`."""
    port = free_port()
    # The copy off: every lookup asks Redis, as a cold replica's do.
    env = child_env(settings.replace(redis_url=redis_url, local_cache_mb=0))
    cmd = granian_command("api.app:create_app", port, settings.stores.redis_pool_size)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=30, what="replica", alive=lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _redis_hits(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(int(float(v)) for v in REDIS_HIT_LINE.findall(text))


def test_a_silent_redis_mid_burst_answers_every_request_from_postgres(
    settings, seeded, redis_server, server_dir
):
    """Redis behind a partition (SilentProxy: the replica's connections get no answer, new
    ones are accepted and never served) mid-burst: every request answers 200 from Postgres,
    none a 500 or an error, none slower than the Redis timeout plus a fallback read; once the
    link returns, lookups are Redis hits again within RECOVERY_BOUND_S."""
    log = server_dir / "replica.log"
    redis_url = "redis://127.0.0.1:{}/0"
    with (
        SilentProxy(redis_server.port) as proxy,
        granian_replica(settings, redis_url.format(proxy.port), log) as url,
    ):
        answers: list[tuple[int, float]] = []
        failures: list[str] = []
        ids = list(range(10_000, 10_000 + settings.dataset.students))

        def client(n: int) -> None:
            rng = random.Random(n)
            with httpx.Client(base_url=url, timeout=10) as http:
                for _ in range(SILENT_BURST // SILENT_THREADS):
                    started = time.monotonic()
                    try:
                        status = http.get(f"/students/{rng.choice(ids)}").status_code
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    answers.append((status, time.monotonic() - started))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(SILENT_THREADS)]
        for thread in threads:
            thread.start()
        poll_until(lambda: len(answers) >= SILENT_BURST // 10, 30)
        proxy.silence()
        poll_until(lambda: len(answers) >= SILENT_BURST // 2, 60)
        proxy.resume()
        hits = _redis_hits(url)
        back = poll_until(lambda: _redis_hits(url) > hits, RECOVERY_BOUND_S)
        for thread in threads:
            thread.join(timeout=60)
    statuses = collections.Counter(status for status, _ in answers)
    unexpected = [line for line in log_tail(log, 10_000).splitlines() if "ERROR" in line]
    assert failures == [], failures[:5]
    assert statuses == {200: SILENT_BURST}, (statuses, unexpected[:5])
    assert unexpected == [], unexpected[:5]
    slowest = max(seconds for _, seconds in answers)
    assert slowest < SILENT_SLOWEST_S, f"slowest answer {slowest:.2f} s"
    print(f"\nsilent Redis: {statuses}, slowest {slowest * 1000:.0f} ms, hits again {back:.2f} s")


def test_redis_connections_reset_while_idle_cost_no_request(
    settings, seeded, redis_server, server_dir
):
    """Every pooled Redis connection of a replica reset while idle (what a peer behind a
    partition, or TCP_USER_TIMEOUT on it, leaves in the pool): the next lookups on them are
    answered (200, from Postgres or Redis), never a 500, and /ready still answers."""
    log = server_dir / "replica.log"
    with (
        SilentProxy(redis_server.port) as proxy,
        granian_replica(settings, f"redis://127.0.0.1:{proxy.port}/0", log) as url,
    ):
        ids = range(10_000, 10_000 + RESET_CLIENTS * 10)
        with httpx.Client(base_url=url, timeout=10) as http:
            statuses = collections.Counter()

            def lookups() -> None:
                # Concurrent, so that the replica's pool holds many connections.
                with concurrent.futures.ThreadPoolExecutor(RESET_CLIENTS) as pool:
                    paths = [f"/students/{i}" for i in ids]
                    for status in pool.map(
                        lambda p: httpx.get(url + p, timeout=10).status_code, paths
                    ):
                        statuses[status] += 1

            lookups()
            proxy.reset()
            time.sleep(0.2)  # the resets reach the replica's idle sockets
            lookups()
            ready = http.get("/ready")
    errors = [line for line in log_tail(log, 10_000).splitlines() if "ERROR" in line]
    assert statuses == {200: 2 * len(ids)}, (statuses, errors[:3])
    assert ready.status_code == 200, ready.text
    assert errors == [], errors[:3]


def test_a_pooled_redis_connection_found_dead_is_retried_on_a_fresh_one(
    settings, seeded, redis_server, server_dir
):
    """Every pooled Redis connection of a replica reset while idle: each next lookup that takes
    one goes once more on a fresh connection, so none falls back to Postgres for a dead one
    (each once did: after a partition, while the Postgres pool was still reconnecting, those
    lookups answered 503). Redis timeouts through the proxy may still fall back: not asserted."""
    log = server_dir / "replica.log"
    with (
        SilentProxy(redis_server.port) as proxy,
        granian_replica(settings, f"redis://127.0.0.1:{proxy.port}/0", log) as url,
    ):
        paths = [f"/students/{i}" for i in range(10_000, 10_000 + RESET_CLIENTS * 10)]
        with concurrent.futures.ThreadPoolExecutor(RESET_CLIENTS) as pool:
            # Concurrent, so that the replica's pool holds many connections.
            list(pool.map(lambda p: httpx.get(url + p, timeout=10).status_code, paths))
            marker = len(log.read_text())
            dead = proxy.reset()
            time.sleep(0.2)  # the resets reach the replica's idle sockets
            before = _outcomes(url)
            statuses = collections.Counter(
                pool.map(lambda p: httpx.get(url + p, timeout=10).status_code, paths)
            )
        after = _outcomes(url)
    failed = [line for line in log.read_text()[marker:].splitlines() if "redis read failed" in line]
    assert dead >= RESET_CLIENTS // 2, f"only {dead} pooled connections to reset"
    assert statuses == {200: len(paths)}, statuses
    assert [line for line in failed if "TimeoutError" not in line] == [], failed[:3]
    assert after["redis_hit"] > before["redis_hit"], (before, after)


def _outcomes(url: str) -> collections.Counter[str]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    out: collections.Counter[str] = collections.Counter()
    for outcome, value in OUTCOME_LINE.findall(text):
        out[outcome] += int(float(value))
    return out


OUTCOME_LINE = re.compile(r'^surge_lookups_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', re.M)


def test_a_redis_timeout_while_postgres_is_gone_asks_redis_again(fresh, settings, postgres_server):
    """On saturated cores a Redis call can pass its 0.1 s timeout with the record on its way.
    With Postgres gone too, the lookup asks Redis again (bounded) instead of answering 503."""
    record_id = 10_302
    rds = redis.Redis.from_url(settings.stores.redis_url)
    assert rds.hget(*STUDENTS.live_slot(rds, record_id)) is not None
    postgres_server.stop()
    try:
        rds.execute_command("CLIENT", "PAUSE", 300, "ALL")  # Redis slow for 0.3 s, then fine
        response, elapsed = timed_get(fresh, f"/students/{record_id}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == record_id
        assert elapsed < UNAVAILABLE_BOUND_S, f"took {elapsed:.3f} s"
    finally:
        rds.execute_command("CLIENT", "UNPAUSE")
        postgres_server.start()
    rds.close()
