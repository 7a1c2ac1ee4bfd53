"""seed(): make both stores hold the dataset the settings describe, doing only what is missing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field

import psycopg

from api.contract import BOOKINGS, DATASETS, STUDENTS, Dataset
from api.settings import Settings
from seeder import generate, postgres, redis_fill
from seeder.progress import Cancelled, Phase, Reporter, reporter_for

Loader = Callable[[psycopg.Connection, Reporter, int, int, generate.Pools], None]


@dataclass(frozen=True, slots=True)
class DatasetReport:
    name: str
    records: int
    postgres_skipped: bool
    """Postgres already held this seed and size: nothing was generated or loaded."""
    redis_skipped: bool
    """Redis already held exactly that Postgres load: nothing was written."""
    redis_version: int
    """The live version of the dataset in Redis after this run."""
    redis_keys: int
    redis_bytes_per_record: float
    """Redis memory per record, measured when the hashes were written (MEMORY USAGE sample)."""
    standby_wait: float = 0.0
    """Seconds the Redis switch waited for the standby to replay the load after the fill (0
    without a standby or a switch)."""


@dataclass(frozen=True, slots=True)
class SeedReport:
    datasets: dict[str, DatasetReport]
    phases: list[Phase] = field(default_factory=list)
    """What was done, in the order it finished (the two datasets overlap), with rows and
    seconds; empty when everything was in sync."""
    seconds: float = 0.0

    @property
    def skipped(self) -> bool:
        return all(d.postgres_skipped and d.redis_skipped for d in self.datasets.values())

    @property
    def redis_bytes_per_record(self) -> dict[str, float]:
        return {name: d.redis_bytes_per_record for name, d in self.datasets.items()}

    def __str__(self) -> str:
        """One line for logs: "students 664,824 (postgres loaded, redis filled, 492 B/record)..."""
        datasets = "; ".join(
            f"{d.name} {d.records:,} (postgres {'in sync' if d.postgres_skipped else 'loaded'}, "
            f"redis {'in sync' if d.redis_skipped else 'filled'}, "
            f"{d.redis_bytes_per_record:,.0f} B/record)"
            for d in self.datasets.values()
        )
        return f"{datasets} in {self.seconds:.1f} s"


def seed(settings: Settings, *, reset: bool = False, progress: bool = False) -> SeedReport:
    """Seed Postgres, then Redis from Postgres. `reset` rebuilds both even when in sync;
    `progress` shows bars on a terminal (lines elsewhere), otherwise nothing is printed."""
    reporter = reporter_for(progress=progress)
    try:
        return run(settings, reset=reset, reporter=reporter)
    finally:
        reporter.close()


def run(settings: Settings, *, reset: bool, reporter: Reporter, pace: float = 0.0) -> SeedReport:
    """`pace`: records a second for both Redis fills together (0: unpaced)."""
    started = time.perf_counter()
    pools = _Pools(settings.seed)
    with postgres.connect(settings.database_url) as conn:
        postgres.prepare(conn)  # holds the seeder lock until this block ends
        with closing(redis_fill.connect(settings.redis_url, cluster=settings.cluster)) as client:
            redis_fill.configure(client)
        # The datasets are independent: seeding them side by side overlaps one's Python work
        # (generating, rendering) with the other's waits on Postgres (index builds, queries).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="seed") as threads:
            futures = [
                threads.submit(
                    _seed_one, settings, reset, reporter, pools, pace / len(DATASETS), *job
                )
                for job in (
                    (STUDENTS, settings.students, postgres.load_students),
                    (BOOKINGS, settings.bookings, postgres.load_bookings),
                )
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                # After a failure or Ctrl-C, the other dataset stops at its next chunk instead
                # of running to the end (its transaction rolls back; nothing half-done stays).
                reporter.cancel()
            # The failure itself first, not the Cancelled it caused in the other thread.
            errors = [e for f in futures if (e := f.exception()) is not None]
            if errors:
                raise min(errors, key=lambda e: isinstance(e, Cancelled))
    reports = [f.result() for f in futures]
    if not all(r.redis_skipped for r in reports):
        with closing(redis_fill.connect(settings.redis_url, cluster=settings.cluster)) as client:
            redis_fill.drop_legacy_control_keys(client)
            redis_fill.snapshot(client)
    return SeedReport(
        {r.name: r for r in reports}, list(reporter.phases), time.perf_counter() - started
    )


class _Pools:
    """Faker's pools (~0.3 s), made at most once and only if some dataset is generated."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._pools: generate.Pools | None = None

    def __call__(self) -> generate.Pools:
        with self._lock:
            if self._pools is None:
                self._pools = generate.build_pools(self._seed, generate.EVENTS)
            return self._pools


def _seed_one(
    settings: Settings,
    reset: bool,
    reporter: Reporter,
    pools: _Pools,
    pace: float,
    dataset: Dataset,
    count: int,
    load: Loader,
) -> DatasetReport:
    with (
        postgres.connect(settings.database_url) as conn,
        closing(redis_fill.connect(settings.redis_url, cluster=settings.cluster)) as client,
    ):
        pg = postgres.loaded(conn, dataset.name)
        pg_skipped = not reset and pg is not None and (pg.seed, pg.rows) == (settings.seed, count)
        if not pg_skipped:
            postgres.tune(conn)
            load(conn, reporter, settings.seed, count, pools())
            pg = postgres.loaded(conn, dataset.name)
        assert pg is not None  # found, or just loaded
        marker = None if reset else redis_fill.in_sync(client, dataset, pg)
        redis_skipped = marker is not None
        standby_wait = 0.0
        if marker is None:
            # Replicas read the standby on a miss: it must hold every row the new version
            # names before the switch. It replays while Redis fills, so this rarely waits.
            written = postgres.wal_position(conn)
            # Beside the live version, which keeps serving until the switch.
            version = redis_fill.next_version(client, dataset)
            with reporter.phase(f"redis {dataset.name}", pg.rows) as advance:
                marker = redis_fill.fill(conn, client, dataset, pg, advance, version, pace)
            if settings.standby_url:
                with reporter.phase(f"standby {dataset.name}", pg.rows) as advance:
                    standby_wait = postgres.wait_for_replay(
                        settings.standby_url, written, settings.standby_replay_timeout, advance
                    )
                    advance(pg.rows)
            marker = redis_fill.switch(client, marker, dataset)
            if redis_fill.stale_keys(client, dataset):
                # Replicas pick the new version up within their refresh interval; until then
                # (and while a lookup that began before is still running) the old one must stay.
                time.sleep(settings.reseed_grace)
        # Also after an in-sync run: what an interrupted run or a late write-back left behind.
        redis_fill.sweep(client, dataset)
    for where, skipped in (("postgres", pg_skipped), ("redis", redis_skipped)):
        if skipped:
            reporter.note(f"{where} {dataset.name}: in sync (seed {pg.seed}, {pg.rows:,} rows)")
    return DatasetReport(
        name=dataset.name,
        records=marker.records,
        postgres_skipped=pg_skipped,
        redis_skipped=redis_skipped,
        redis_version=marker.version,
        redis_keys=marker.keys,
        redis_bytes_per_record=marker.bytes_per_record,
        standby_wait=standby_wait,
    )
