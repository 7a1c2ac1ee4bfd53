"""Zero-downtime reseed: a reseed while clients read serves every record entirely old or entirely
new, fails no request, removes the old Redis version, and never blocks Postgres readers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from litestar.testing import TestClient

from core.contract import BOOKINGS, DATASETS, STUDENTS, Dataset
from seeder import seed
from seeder.postgres import APPLICATION_NAME, STAGING_SCHEMA
from seeder.redis_fill import live_version, stale_keys

# A fallback read must not wait for a load (seconds at full size), only for the swap.
FALLBACK_BOUND_S = 1.0
DEADLINE_S = 60.0


def ids_of(pg: psycopg.Connection, dataset: Dataset, count: int) -> list:
    column = "id" if dataset is STUDENTS else "id::text"
    return [
        r[0] for r in pg.execute(f"SELECT {column} FROM {dataset.name} ORDER BY id LIMIT {count}")
    ]


def rendered(pg: psycopg.Connection, dataset: Dataset, record_id) -> bytes | None:
    row = pg.execute(dataset.select_one, (record_id,)).fetchone()
    return None if row is None else dataset.render(row)


def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.02)


class Hammer(threading.Thread):
    """GETs the given paths round and round until stopped, keeping every (path, status, body)."""

    def __init__(self, fresh: TestClient, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.fresh, self.paths = fresh, paths
        self.stop = threading.Event()
        self.responses: list[tuple[str, int, bytes]] = []

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            for path in self.paths:
                response = self.fresh.get(path)
                self.responses.append((path, response.status_code, response.content))


def test_reseed_under_reads_serves_old_or_new_and_fails_nothing(fresh, settings, pg, rds, restore):
    paths, old = [], {}
    for dataset in DATASETS:
        for record_id in ids_of(pg, dataset, 20):
            path = f"/{dataset.name}/{record_id}"
            paths.append(path)
            old[path] = (dataset, record_id, fresh.get(path).content)
    versions_before = {d.name: live_version(rds, d) for d in DATASETS}

    hammer = Hammer(fresh, paths)
    hammer.start()
    try:
        poll_until(lambda: len(hammer.responses) > len(paths), 10, "hammer started")
        # Another seed: every student record changes (ids stay); bookings get other ids.
        report = seed(settings.replace(seed=settings.dataset.seed + 1))
        new = {path: rendered(pg, d, record_id) for path, (d, record_id, _) in old.items()}
        student_path = next(p for p in paths if p.startswith("/students/"))
        # The replica switches within its refresh interval: wait until it serves the new data.
        poll_until(
            lambda: fresh.get(student_path).content == new[student_path],
            5,
            "replica switched",
        )
        seen = len(hammer.responses)
        poll_until(lambda: len(hammer.responses) > seen + len(paths), 10, "reads after switch")
    finally:
        hammer.stop.set()
        hammer.join(timeout=DEADLINE_S)

    assert not any(d.postgres_skipped or d.redis_skipped for d in report.datasets.values())
    kinds = {"old": 0, "new": 0}
    for path, status, body in hammer.responses:
        dataset, _, old_body = old[path]
        if body == old_body:
            assert status == 200
            kinds["old"] += 1
        elif new[path] is not None:
            assert (status, body) == (200, new[path]), f"{path}: neither old nor new"
            kinds["new"] += 1
        else:  # a booking id the new seed does not have
            assert dataset is BOOKINGS and status == 404, f"{path}: {status} {body[:200]!r}"
            kinds["new"] += 1
    assert kinds["old"] > 0 and kinds["new"] > 0, kinds  # the reads spanned the switch
    # Students' records differ between the seeds, so both versions were really served.
    assert all(new[p] != old[p][2] for p in paths if p.startswith("/students/"))

    for dataset in DATASETS:
        assert live_version(rds, dataset) > versions_before[dataset.name]
        assert stale_keys(rds, dataset) == [], f"{dataset.name}: old version still in Redis"


def loading(pg: psycopg.Connection) -> bool:
    """The seeder has a write transaction open: it is loading (COPY, key builds) or swapping."""
    return pg.execute(
        "SELECT EXISTS (SELECT FROM pg_stat_activity"
        " WHERE application_name = %s AND backend_xid IS NOT NULL)",
        (APPLICATION_NAME,),
    ).fetchone()[0]


def test_postgres_reads_are_not_blocked_by_a_load(fresh, settings, pg, rds, restore):
    # Big enough that the load takes a while (the old TRUNCATE-and-COPY held every reader for
    # all of it), small enough for the suite: ~1 s of COPY and key builds.
    bigger = settings.replace(students=100_000)
    errors: list[BaseException] = []

    def reseed() -> None:
        try:
            seed(bigger)
        except BaseException as exc:
            errors.append(exc)

    seeder = threading.Thread(target=reseed, daemon=True)
    seeder.start()
    poll_until(lambda: loading(pg) or not seeder.is_alive(), 30, "load started")
    timings = []
    record_id = 10_000
    while loading(pg):
        rds.hdel(*STUDENTS.live_slot(rds, record_id))  # a miss: the API reads Postgres
        started = time.monotonic()
        response = fresh.get(f"/students/{record_id}")
        timings.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
        record_id += 1
    seeder.join(timeout=DEADLINE_S)
    assert not errors, errors
    assert timings, "no read happened during the load"
    assert max(timings) < FALLBACK_BOUND_S, f"slowest fallback read {max(timings):.3f} s"
    assert pg.execute("SELECT count(*) FROM students").fetchone()[0] == bigger.dataset.students
    staged = pg.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (STAGING_SCHEMA,)
    ).fetchone()[0]
    assert staged == 0  # every staged table was moved into place


def test_swapped_tables_keep_the_schema_keys(seeded, settings, pg, restore):
    def keys() -> list[tuple]:
        return pg.execute(
            """
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace
            ORDER BY 1, 2
            """
        ).fetchall()

    before = keys()
    seed(settings, reset=True)
    assert keys() == before
