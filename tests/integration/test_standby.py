"""A streaming standby for the fallback reads: misses read it, a dead one costs no request, reads
come back to it, and Redis never names a version it cannot serve yet.

Each test starts a real standby of the session's Postgres on a free port
(stack.servers.StandbyServer: pg_basebackup -R, then streaming; well under a second).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from polling import poll

from api.app import create_app
from core.contract import DATASETS, STUDENTS
from seeder import seed
from seeder.postgres import APPLICATION_NAME, StandbyBehind
from seeder.redis_fill import live_version
from stack.servers import StandbyServer, child_pids, free_port, wait_gone

TOKEN = "test-admin-token-standby"
# The promise: with the standby gone, a miss is answered from the primary within 1 s.
FALLBACK_BOUND_S = 1.0
# A backend publishes its statistics when it exits (an idle one: within 10 s).
STATS_BOUND_S = 15.0
BACK_BOUND_S = 10.0
SEED_BOUND_S = 60.0


@pytest.fixture
def standby(postgres_server, seeded, server_dir) -> Iterator[StandbyServer]:
    server = postgres_server.standby(server_dir / "standby", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def standby_settings(settings, standby):
    return settings.replace(
        database_read_url=standby.url, standby_replay_timeout=30.0, admin_token=TOKEN
    )


@contextmanager
def serving(settings: Any) -> Iterator[TestClient]:
    """The app over these settings, once its misses read the standby."""
    with TestClient(app=create_app(settings)) as client:
        lookup = client.app.state.lookup
        poll(lambda: lookup.reads_on_standby, 5, "misses on the standby")
        yield client


@pytest.fixture
def client(standby_settings) -> Iterator[TestClient]:
    with serving(standby_settings) as client:
        yield client


@pytest.fixture
def sb(standby) -> Iterator[psycopg.Connection]:
    """A connection to the standby (read-only, autocommit)."""
    with psycopg.connect(standby.url, autocommit=True) as conn:
        yield conn


def calls(timer: Any) -> int:
    """How many calls a store-call histogram child has seen."""
    return sum(timer.counts)


def served_by(client: TestClient, path: str) -> tuple[Any, str]:
    """The response to GET path and which Postgres answered it, from the replica's metrics."""
    metrics = client.app.state.lookup.metrics
    before = calls(metrics.standby_select), calls(metrics.postgres_select)
    response = client.get(path)
    after = calls(metrics.standby_select), calls(metrics.postgres_select)
    where = {(1, 0): "standby", (0, 1): "primary"}.get(
        (after[0] - before[0], after[1] - before[1]), "neither"
    )
    return response, where


def student_scans(conn: psycopg.Connection) -> int:
    """Index scans of the students table this server has counted (its own statistics)."""
    return conn.execute(
        "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'students'"
    ).fetchone()[0]


def a_miss(rds, student: int) -> bytes:
    """Drop one student from Redis so the next lookup reads Postgres; the bytes it had."""
    key, field = STUDENTS.live_slot(rds, student)
    body = rds.hget(key, field)
    assert body is not None
    rds.hdel(key, field)
    return body


def signal_standby(standby: StandbyServer, sig: int) -> None:
    """Signal every process of the standby: Postgres backends lead process groups of their own,
    so the postmaster's group is not all of it."""
    for pid in [standby.pid, *child_pids(standby.pid)]:
        os.kill(pid, sig)


def students(settings) -> Iterator[int]:
    """The session's student ids, round and round (each miss writes its record back)."""
    return itertools.cycle(range(10_000, 10_000 + settings.dataset.students))


def misses_for(
    seconds: float, client: TestClient, rds, ids: Iterator[int]
) -> list[tuple[float, int, bool, str]]:
    """Lookups of students not in Redis, one after the other, for `seconds`: (seconds taken,
    status, right body, which Postgres answered) each."""
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        student = next(ids)
        expected = a_miss(rds, student)
        started = time.monotonic()
        response, where = served_by(client, f"/students/{student}")
        elapsed = time.monotonic() - started
        results.append((elapsed, response.status_code, response.content == expected, where))
    return results


def pause_replay(sb: psycopg.Connection) -> None:
    sb.execute("SELECT pg_wal_replay_pause()")
    poll(
        lambda: sb.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused",
        5,
        "replay paused",
    )


def test_misses_read_the_standby(standby_settings, rds, sb):
    scans_before = student_scans(sb)
    with serving(standby_settings) as client:
        results = misses_for(0.3, client, rds, students(standby_settings))
        assert len(results) >= 10
        assert all(r[1:] == (200, True, "standby") for r in results), results
        assert b"surge_postgres_standby_reads 1.0" in client.get("/metrics").content
    # The standby's own statistics saw the reads (published as the app's connections closed).
    poll(
        lambda: student_scans(sb) - scans_before >= len(results),
        STATS_BOUND_S,
        "standby statistics",
    )


def test_a_killed_standby_costs_no_request_and_reads_come_back(client, settings, standby, rds):
    """SIGKILL (every process of it) between two lookups: the next miss fails on the standby,
    is answered from the primary in the same request, and so is every miss after it; once the
    standby is back and caught up, misses read it again."""
    lookup, metrics = client.app.state.lookup, client.app.state.lookup.metrics
    ids = students(settings)
    before = misses_for(0.3, client, rds, ids)
    assert before and all(r[1:] == (200, True, "standby") for r in before), before
    errors_before = metrics.standby_errors.value
    pid = standby.pid
    signal_standby(standby, signal.SIGKILL)
    assert wait_gone(pid, 10, standby._popen), "standby survived SIGKILL"
    after = misses_for(2.0, client, rds, ids)
    assert len(after) >= 20
    assert all(r[1:] == (200, True, "primary") for r in after), after  # 0 failed
    slowest = max(r[0] for r in after)
    assert slowest < FALLBACK_BOUND_S, f"slowest miss after the kill {slowest:.3f} s"
    assert metrics.standby_errors.value == errors_before + 1  # asked once, failed, left
    assert not lookup.reads_on_standby
    print(
        f"\nstandby killed: {len(after)} misses in 2 s after it, all from the primary; the "
        f"first took {after[0][0] * 1000:.1f} ms, the slowest {slowest * 1000:.1f} ms"
    )

    standby.start()

    def back_on_standby() -> bool:
        student = next(ids)
        expected = a_miss(rds, student)
        response, where = served_by(client, f"/students/{student}")
        assert (response.status_code, response.content) == (200, expected)
        return where == "standby"

    back = poll(back_on_standby, BACK_BOUND_S, "misses back on the standby")
    print(f"standby restarted: misses read it again {back:.2f} s after it accepted connections")


def test_a_hung_standby_costs_no_request(client, settings, standby, rds):
    """Every process of the standby stopped (SIGSTOP: the kernel still accepts, nothing
    answers, like a host gone silent): the miss in flight gives up on it after
    SURGE_PG_WAIT_TIMEOUT and is answered from the primary, and so is every miss after it."""
    lookup = client.app.state.lookup
    signal_standby(standby, signal.SIGSTOP)
    try:
        after = misses_for(2.0, client, rds, students(settings))
    finally:
        signal_standby(standby, signal.SIGCONT)
    assert len(after) >= 20
    assert all(r[1:] == (200, True, "primary") for r in after), after  # 0 failed
    slowest = max(r[0] for r in after)
    assert slowest < FALLBACK_BOUND_S, f"slowest miss while hung {slowest:.3f} s"
    print(f"\nstandby hung: the first miss took {after[0][0]:.3f} s, the slowest {slowest:.3f} s")
    poll(lambda: lookup.reads_on_standby, BACK_BOUND_S, "misses back on the standby")


def test_a_reseed_switches_redis_only_once_the_standby_has_replayed_it(
    standby_settings, settings, pg, rds, sb, restore
):
    pause_replay(sb)
    live_before = {d.name: live_version(rds, d) for d in DATASETS}
    new_seed = settings.dataset.seed + 1
    outcome: dict[str, Any] = {}

    def reseed() -> None:
        try:
            outcome["report"] = seed(standby_settings.replace(seed=new_seed))
        except BaseException as exc:
            outcome["error"] = exc

    seeder = threading.Thread(target=reseed, daemon=True)
    seeder.start()
    try:
        # The seeder asks the standby once a dataset's load is in the primary and its new
        # Redis version filled: both datasets waiting.
        poll(
            lambda: (
                not seeder.is_alive()
                or sb.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (APPLICATION_NAME,),
                ).fetchone()[0]
                == len(DATASETS)
            ),
            SEED_BOUND_S,
            "seeder waiting for the standby",
        )
        assert seeder.is_alive(), outcome
        loaded = dict(pg.execute("SELECT dataset, seed FROM dataset_meta").fetchall())
        assert loaded["students"] == new_seed  # the primary holds the new load
        held = time.monotonic()
        while time.monotonic() - held < 1.0:
            assert {d.name: live_version(rds, d) for d in DATASETS} == live_before
            time.sleep(0.05)
        assert seeder.is_alive()
    finally:
        sb.execute("SELECT pg_wal_replay_resume()")
    switched = poll(
        lambda: all(live_version(rds, d) > live_before[d.name] for d in DATASETS),
        SEED_BOUND_S,
        "Redis switched after the replay",
    )
    seeder.join(timeout=SEED_BOUND_S)
    assert not seeder.is_alive() and "error" not in outcome, outcome
    for dataset in DATASETS:
        assert outcome["report"].datasets[dataset.name].standby_wait >= 1.0
    standby_loaded = dict(sb.execute("SELECT dataset, seed FROM dataset_meta").fetchall())
    assert standby_loaded["students"] == new_seed  # the standby serves what Redis now names
    print(f"\nreplay resumed: Redis switched {switched:.2f} s later")


def test_a_reseed_gives_up_when_the_standby_stays_behind(
    standby_settings, settings, rds, sb, restore
):
    pause_replay(sb)
    live_before = {d.name: live_version(rds, d) for d in DATASETS}
    impatient = standby_settings.replace(seed=settings.dataset.seed + 2, standby_replay_timeout=0.5)
    with pytest.raises(StandbyBehind, match="SURGE_STANDBY_REPLAY_TIMEOUT"):
        seed(impatient)
    assert {d.name: live_version(rds, d) for d in DATASETS} == live_before


def test_a_refresh_reads_the_primary_and_waits_for_the_standby(client, pg, rds, sb):
    """The correction is read from the primary, and written to Redis only once the standby
    has replayed it: a miss on another replica then cannot read it there as it was."""
    student = 10_300
    key, field = STUDENTS.live_slot(rds, student)
    cached = rds.hget(key, field)
    original = pg.execute("SELECT full_name FROM students WHERE id = %s", (student,)).fetchone()[0]
    pause_replay(sb)
    answers: list[Any] = []
    refresh = threading.Thread(
        target=lambda: answers.append(
            client.post(
                f"/admin/students/{student}/refresh",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        ),
        daemon=True,
    )
    try:
        pg.execute("SET synchronous_commit = on")  # as a correction by hand commits by default
        pg.execute("UPDATE students SET full_name = 'Corrected Name' WHERE id = %s", (student,))
        refresh.start()
        held = time.monotonic()
        while time.monotonic() - held < 1.0:
            assert rds.hget(key, field) == cached  # the standby has not replayed it yet
            time.sleep(0.05)
        assert refresh.is_alive()
        sb.execute("SELECT pg_wal_replay_resume()")
        refresh.join(timeout=10)
        assert not refresh.is_alive()
        assert answers[0].status_code == 200, answers[0].text
        assert b'"name":"Corrected Name"' in rds.hget(key, field)
    finally:
        sb.execute("SELECT pg_wal_replay_resume()")
        refresh.join(timeout=10)
        pg.execute("UPDATE students SET full_name = %s WHERE id = %s", (original, student))
        client.post(
            f"/admin/students/{student}/refresh", headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert rds.hget(key, field) == cached
