"""End to end through nginx, against the local stack as `make up` starts it, then `make down`.

The module starts its own stack with the real launcher (`python -m stack up` in a subprocess):
a temp run dir, free loopback ports for everything (never a developer's 8080/9090), 3 replicas,
a small dataset, the rate limit off (a burst from one client is one IP) and nginx's access log
on: each line names the replica that answered ($upstream_addr), which is how these tests see
where nginx sent a request. Every request carries a query tag naming its test, so the lines of
one test are told apart from the others' (the log is flushed every second).

Bounded loops, loopback only, waits poll with a deadline.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from k6_runner import EXPORT_IDS, K6, KINDS, assert_all_checks_passed, output, run_k6
from polling import poll
from stack_fixture import STUDENTS, LocalStack, leftovers, run_local_stack

from seeder.generate import FIRST_STUDENT_ID
from stack.launcher import (
    REDIS_MAXMEMORY,
    REDIS_MAXMEMORY_POLICY,
    REPLICA_START_RETRIES,
    ROOT,
    Layout,
    default_replicas,
    http_ok,
    replica_count,
)
from stack.servers import HOST, ServerError, child_pids

REPLICAS = 3
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # The first replica spills to the others beyond one request in flight (default 24), so a
    # few client threads reach every replica.
    with run_local_stack(
        REPLICAS, SURGE_NGINX_ACCESS_LOG="on", SURGE_NGINX_SPILL_AT="1", SURGE_POSTGRES_STANDBY="1"
    ) as local:
        yield local


def get_many(
    base: str,
    tag: str,
    total: int,
    threads: int = 4,
    on_progress: Callable[[int], None] | None = None,
    until: threading.Event | None = None,
) -> tuple[Counter[int], list[str]]:
    """`total` GETs of random students over `threads` keep-alive clients (fewer if `until` is
    set first): statuses, errors."""
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    done = [0]

    def worker(count: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(count):
                if until is not None and until.is_set():
                    return
                sid = random.randint(FIRST_STUDENT_ID, FIRST_STUDENT_ID + STUDENTS - 1)
                try:
                    r = client.get(f"/students/{sid}", params={"t": tag, "i": str(i)})
                    status = r.status_code
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    statuses[status] += 1
                    done[0] += 1
                    if status != 200:
                        errors.append(f"{status}: {r.text[:200]}")
                if on_progress:
                    on_progress(done[0])

    share = [total // threads + (1 if k < total % threads else 0) for k in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker, n) for n in share]:
            f.result()
    return statuses, errors


def upstream_port(line: dict[str, str]) -> int | None:
    """The replica that gave the final answer (after retries, the last address)."""
    last = line["upstream"].split(",")[-1].strip()
    return int(last.rsplit(":", 1)[1]) if ":" in last else None


# ---------------------------------------------------------------------------------------------


def test_up_serves_through_nginx_light_load_on_one_replica_and_bursts_on_all(
    stack: LocalStack,
) -> None:
    statuses, errors = get_many(stack.url, "light", 100, threads=1)
    assert errors == [] and statuses == Counter({200: 100})
    lines = stack.served_by("light", 100)
    assert len(lines) == 100
    # One client in sequence never has a second request in flight: all on the first replica.
    assert Counter(upstream_port(line) for line in lines) == {stack.replica_port(1): 100}
    statuses, errors = get_many(stack.url, "spread", 600, threads=6)
    assert errors == [] and statuses == Counter({200: 600})
    lines = stack.served_by("spread", 600)
    by_port = Counter(upstream_port(line) for line in lines)
    replica_ports = {stack.replica_port(n) for n in range(1, REPLICAS + 1)}
    assert set(by_port) == replica_ports, by_port
    for n in range(1, REPLICAS + 1):  # replicas listen on loopback, not on the public port
        assert stack.record(f"api-{n}").port == stack.replica_port(n)


def test_a_streaming_standby_runs_beside_postgres(stack: LocalStack) -> None:
    """SURGE_POSTGRES_STANDBY=1: supervisord runs a standby made from the primary, streaming
    from it, and the replicas read their fallbacks there (tests/test_standby.py: how)."""
    assert stack.record("postgres-standby").live
    standby = f"postgresql://surge@{HOST}:{stack.layout.pg_standby_port}/surge"
    with psycopg.connect(standby, connect_timeout=5) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        (students,) = conn.execute("SELECT count(*) FROM students").fetchone() or (0,)
    assert students == STUDENTS
    primary = f"postgresql://surge@{HOST}:{stack.layout.pg_port}/surge"
    with psycopg.connect(primary, connect_timeout=5) as conn:
        states = conn.execute("SELECT state FROM pg_stat_replication").fetchall()
    assert states == [("streaming",)]
    metrics = httpx.get(f"http://{HOST}:{stack.replica_port(1)}/metrics", timeout=5).text
    assert "surge_postgres_standby_reads" in metrics


def test_nginx_own_errors_are_problem_details(stack: LocalStack) -> None:
    with httpx.Client(base_url=stack.url, timeout=5) as client:
        cases = [
            (client.get("/nope"), 404),
            (client.post("/students/10000"), 405),
            (client.get("/students/" + "1" * 9000), 414),
            (client.get("/metrics"), 404),  # replicas' metrics are not public
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            assert response.headers["content-type"].startswith(PROBLEM), response.headers
            body = response.json()
            assert body["status"] == status and body["title"], body
        assert cases[1][0].headers["allow"] == "GET, HEAD"
        # The API's own errors pass through untouched, in the same shape.
        api = client.get("/students/007")
        assert api.status_code == 400 and api.headers["content-type"].startswith(PROBLEM)
        status_page = httpx.get(f"http://{HOST}:{stack.layout.nginx_status_port}/stub_status")
        assert status_page.status_code == 200 and "Active connections" in status_page.text


def test_killing_a_replica_during_a_burst_costs_clients_nothing(stack: LocalStack) -> None:
    victim = stack.record("api-2")
    killed = threading.Event()

    def kill_at(done: int) -> None:
        if done >= 250 and not killed.is_set():
            killed.set()
            os.killpg(victim.pid, signal.SIGKILL)  # the whole replica: Granian and its worker

    statuses, errors = get_many(stack.url, "kill", 1000, threads=4, on_progress=kill_at)
    assert killed.is_set()
    assert errors == [], errors[:5]
    assert statuses == Counter({200: 1000})
    lines = stack.served_by("kill", 1000)
    assert len(lines) == 1000
    assert any(upstream_port(line) == victim.port for line in lines)  # it had traffic
    retried = [line for line in lines if "," in line["upstream"]]
    assert retried, "no request was retried: the kill came too late to test anything"
    assert all(upstream_port(line) != victim.port for line in retried)


def test_a_killed_replica_is_started_again_within_5_s_and_rejoins(stack: LocalStack) -> None:
    """supervisord starts a replica whose whole process group was SIGKILLed again at once;
    nginx takes it back by itself (after fail_timeout), without a reload; nothing else moves."""
    ready = f"http://{HOST}:{stack.replica_port(2)}/ready"
    poll(lambda: http_ok(ready), 10, "api-2 ready (the burst test before killed it)")
    victim = stack.record("api-2")
    nginx = stack.record("nginx")
    workers = child_pids(nginx.pid)
    others = {name: stack.record(name).pid for name in ("prometheus", "api-1", "api-3")}
    os.killpg(victim.pid, signal.SIGKILL)

    def revived() -> bool:
        proc = stack.record("api-2")
        return proc.live and proc.pid != victim.pid and http_ok(ready)

    back = poll(revived, 5, "api-2 started again and ready")
    print(f"\n[stack-e2e] replica SIGKILLed: ready again after {back:.1f} s")
    assert {name: stack.record(name).pid for name in others} == others
    deadline = time.monotonic() + 15
    seen, batch = False, 0
    while not seen and time.monotonic() < deadline:
        batch += 1
        get_many(stack.url, f"rejoin{batch}", 30, threads=4)
        lines = stack.served_by(f"rejoin{batch}", 30)
        seen = any(
            upstream_port(line) == victim.port and line["upstream_status"] == "200"
            for line in lines
        )
    assert seen, "nginx never sent a request to the restarted replica"
    assert stack.record("nginx").pid == nginx.pid and child_pids(nginx.pid) == workers


def test_a_replica_that_keeps_failing_is_given_up_and_status_says_so(stack: LocalStack) -> None:
    """Its port taken by a stranger, api-3 fails at every start: supervisord gives up after
    REPLICA_START_RETRIES tries, `status` names it and exits 1, the others serve on; `up`
    starts it again once the port is free."""
    victim = stack.record("api-3")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        os.killpg(victim.pid, signal.SIGKILL)
        poll(lambda: _try_bind(squatter, victim.port), 5, "api-3's port free after the kill")
        squatter.listen()
        poll(lambda: stack.record("api-3").state == "FATAL", 30, "supervisord giving up on api-3")
        status = stack.launcher("status")
        assert status.returncode == 1, status.stdout + status.stderr
        (line,) = [ln for ln in status.stdout.splitlines() if "api-3" in ln]
        assert "FATAL" in line and f"GAVE UP after {REPLICA_START_RETRIES}" in line, line
        statuses, errors = get_many(stack.url, "given-up", 200, threads=4)
        assert errors == [] and statuses == Counter({200: 200})
    finally:
        squatter.close()
    done = stack.launcher("up")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "api-3: starting" in done.stdout and "api-1: already running" in done.stdout
    assert stack.record("api-3").live
    assert stack.launcher("status").returncode == 0


def _try_bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind((HOST, port))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("name", ["nginx", "prometheus", "redis-exporter", "redis-keeper"])
def test_every_other_process_is_supervised_too(stack: LocalStack, name: str) -> None:
    """The entry, monitoring and the keeper come back after a SIGKILL of their group as well
    (the stores: test_faults_under_load)."""
    before = stack.record(name)
    os.killpg(before.pid, signal.SIGKILL)
    poll(
        lambda: (p := stack.record(name)).state == "RUNNING" and p.pid != before.pid,
        10,
        f"{name} running again",
    )
    if name == "nginx":
        poll(lambda: http_ok(f"{stack.url}/ready"), 10, "nginx answering again")


def test_restart_is_graceful_under_load(stack: LocalStack) -> None:
    """`python -m stack restart api-1` while clients keep asking: no request fails."""
    before = stack.record("api-1")
    finished = threading.Event()
    result: dict[str, object] = {}
    progress = [0]

    def load() -> None:
        result["statuses"], result["errors"] = get_many(
            stack.url, "restart", 50_000, threads=2, until=finished,
            on_progress=lambda done: progress.__setitem__(0, done),
        )  # fmt: skip

    thread = threading.Thread(target=load)
    thread.start()
    try:
        while progress[0] < 50 and thread.is_alive():  # the load runs before the restart
            time.sleep(0.01)
        at_start = progress[0]
        done = stack.launcher("restart", "api-1")
        during = progress[0] - at_start
    finally:
        finished.set()
        thread.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not thread.is_alive()
    assert result["errors"] == [], result["errors"]
    assert during > 100, f"only {during} requests while the replica restarted"
    after = stack.record("api-1")
    assert after.pid != before.pid and after.live
    served = Counter(upstream_port(line) for line in stack.served_by("restart", progress[0]))
    assert served[before.port] > 0, served


def test_rate_limit_answers_429_with_retry_after(stack: LocalStack) -> None:
    done = stack.launcher(
        "up", SURGE_RATE_LIMIT="on", SURGE_RATE_LIMIT_RATE="1r/s", SURGE_RATE_LIMIT_BURST="2"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nginx: reloading" in done.stdout
    try:
        with httpx.Client(base_url=stack.url, timeout=5) as client:
            responses = [client.get(f"/students/{FIRST_STUDENT_ID}") for _ in range(12)]
        codes = Counter(r.status_code for r in responses)
        assert codes[200] >= 1 and codes[429] >= 6, codes
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.headers["retry-after"] == "1"
        assert limited.headers["content-type"].startswith(PROBLEM)
        assert limited.json()["status"] == 429
    finally:
        done = stack.launcher("up")  # back to the module's settings (rate limit off)
        assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_every_target(stack: LocalStack) -> None:
    base = f"http://{HOST}:{stack.layout.prometheus_port}"
    expected = {
        ("prometheus", stack.layout.prometheus_port),
        ("nginx", stack.layout.nginx_exporter_port),
        ("redis", stack.layout.redis_exporter_port),
        ("postgres", stack.layout.postgres_exporter_port),
        ("node", stack.layout.node_exporter_port),
        ("mtail", stack.layout.mtail_port),
        *(("api", stack.replica_port(n)) for n in range(1, REPLICAS + 1)),
    }
    deadline = time.monotonic() + 30
    while True:
        targets = httpx.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        health = {
            (t["labels"]["job"], int(t["labels"]["instance"].rsplit(":", 1)[1])): t["health"]
            for t in targets
        }
        if set(health) == expected and set(health.values()) == {"up"}:
            break
        assert time.monotonic() < deadline, f"targets not all up: {health}"
        time.sleep(0.5)
    flags = httpx.get(f"{base}/api/v1/status/flags", timeout=5).json()["data"]
    assert flags["web.enable-remote-write-receiver"] == "true"
    assert flags["storage.tsdb.path"].startswith(str(stack.layout.run))
    # The exporters see what they export.
    query = "sum(nginx_up) + sum(redis_up) + sum(pg_up)"
    value = httpx.get(f"{base}/api/v1/query", params={"query": query}, timeout=5).json()
    assert value["data"]["result"][0]["value"][1] == "3", value


def test_k6_smoke_passes_through_nginx(stack: LocalStack, tmp_path: Path) -> None:
    """CI's k6 smoke: the real scenario through nginx, failing when its thresholds fail."""
    ids = tmp_path / "booking-ids.json"
    database_url = f"postgresql://surge@{HOST}:{stack.layout.pg_port}/surge"
    export = subprocess.run(
        [sys.executable, str(EXPORT_IDS), "--count", "200", "--out", str(ids)],
        cwd=ROOT,
        env={**os.environ, "SURGE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    env = {"BASE_URL": stack.url, "SURGE_STUDENTS": str(STUDENTS), "BOOKING_IDS": str(ids)}
    done, summary = run_k6(K6, "smoke.js", tmp_path, env)
    assert done.returncode == 0, output(done)
    assert_all_checks_passed(summary, KINDS)


def test_down_leaves_no_process_behind(stack: LocalStack) -> None:
    stack.note_sessions()
    assert leftovers(stack), "the scan sees nothing while the stack runs: it would prove nothing"
    done = stack.launcher("down")
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(stack) == []
    assert stack.launcher_api.processes() == [] and stack.launcher_api.supervisor.pid is None
    again = stack.launcher("down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout


# ---------------------------------------------------------------------------------------------
# the launcher's settings (no processes)


def test_layout_defaults_are_the_documented_ports() -> None:
    layout = Layout.from_env({})
    assert (layout.http_port, layout.prometheus_port) == (8080, 9090)  # the README's
    assert layout.run == ROOT / ".run"
    assert layout.replica_port(1) == 8001 and layout.nginx_prefix == ROOT / ".run" / "nginx"
    custom = Layout.from_env({"SURGE_HTTP_PORT": "18080", "SURGE_RUN_DIR": "/tmp/x"})
    assert custom.http_port == 18080 and custom.run == Path("/tmp/x")
    with pytest.raises(ServerError, match="SURGE_PROMETHEUS_PORT"):
        Layout.from_env({"SURGE_PROMETHEUS_PORT": "90x"})


def test_redis_memory_cap_is_compose_default() -> None:
    text = (ROOT / "compose.yaml").read_text()
    (default,) = re.findall(r"\$\{SURGE_REDIS_MAXMEMORY:-(\w+)\}", text)
    assert default == REDIS_MAXMEMORY
    assert f"- --maxmemory-policy\n      - {REDIS_MAXMEMORY_POLICY}" in text


def test_replica_default_is_compose_default() -> None:
    """One number for both launchers: compose.yaml's `${SURGE_REPLICAS:-N}`."""
    text = (ROOT / "compose.yaml").read_text()
    (default,) = re.findall(r"\$\{SURGE_REPLICAS:-(\d+)\}", text)
    assert replica_count({}) == default_replicas() == int(default)
    assert replica_count({"SURGE_REPLICAS": "3"}) == 3
    with pytest.raises(ServerError, match="SURGE_REPLICAS"):
        replica_count({"SURGE_REPLICAS": "0"})
