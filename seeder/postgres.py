"""Postgres side: schema, what is loaded (dataset_meta), and the bulk load of each dataset.

A dataset is rebuilt beside the live one, so the API's reads (Redis misses) are never blocked by a
load: its tables are created afresh in the staging schema `surge_next`, COPYed into without keys,
given their keys and statistics, and committed there. Then one short transaction drops the live
tables, moves the staged ones into `public` (SET SCHEMA keeps their indexes, keys and statistics)
and records (seed, rows) in dataset_meta. Readers see the old data or the new, never half of it,
and wait at most for that swap; a load that dies leaves the live data and its meta row as they were.
Foreign keys checked row by row during COPY cost ~10x the load itself (4M score rows: 44 s against
~4 s), while adding them afterwards checks every row in one join; a primary key built once from
sorted data beats millions of inserts into random places of the index (bookings' UUIDs).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg

from core.contract import PRIMARY_WAL_POSITION, SCHEMA_SQL, STANDBY_REPLAYED
from core.settings import env_name
from seeder import generate
from seeder.progress import Advance, Reporter

STUDENT_TABLES = ("subjects", "students", "student_scores")
BOOKING_TABLES = ("events", "shows", "zones", "bookings")

STAGING_SCHEMA = "surge_next"
APPLICATION_NAME = "surge-seed"

# The swap waits this long for readers' locks, then gives way and tries again, so readers never
# queue long behind it (a waiting ACCESS EXCLUSIVE request blocks every reader that comes after).
_SWAP_LOCK_TIMEOUT = "500ms"
_SWAP_ATTEMPTS = 20

# Seconds between two questions to a standby that has not replayed a load yet.
_REPLAY_POLL_S = 0.05

# Serialises seeders started at the same moment (compose + a test run, say): the second waits,
# then finds the data loaded and skips. Any constant works; this one spells "surge".
_ADVISORY_LOCK = 0x7375726765


class StandbyBehind(RuntimeError):
    """The standby did not replay a load within SURGE_STANDBY_REPLAY_TIMEOUT."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What dataset_meta says Postgres holds for one dataset."""

    seed: int
    rows: int
    loaded_at: datetime


def connect(url: str) -> psycopg.Connection:
    # Named, so an operator (or a test) can tell the seeder's sessions in pg_stat_activity.
    conn = psycopg.connect(url, autocommit=True, application_name=APPLICATION_NAME)
    # The contract's SQL formats times in UTC itself; UTC here keeps anything else this session
    # prints or parses (COPY's timestamps) unambiguous too.
    conn.execute("SET TimeZone = 'UTC'")
    # Index builds and the read-back take seconds by design: a role's default timeout, common
    # on managed servers, must not cut them short.
    conn.execute("SET statement_timeout = 0")
    # Commits reach the WAL before they return, so the WAL position read after a load covers
    # it: the standby is compared with that position (a server may default to asynchronous).
    conn.execute("SET synchronous_commit = on")
    # The fill's full-table reads cross jit_above_cost: compiling them costs a burst of CPU at
    # each start that the replicas feel, and makes no row cheaper.
    conn.execute("SET jit = off")
    return conn


def prepare(conn: psycopg.Connection) -> None:
    """Take the seeder lock (held until `conn` closes) and apply the schema."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK,))
    conn.execute(SCHEMA_SQL)  # CREATE ... IF NOT EXISTS throughout: safe to repeat
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {STAGING_SCHEMA}")


def tune(conn: psycopg.Connection) -> None:
    """Session settings for a bulk load."""
    # Index builds sort in memory when they can (the server default is 64 MB).
    conn.execute("SET maintenance_work_mem = '256MB'")


def loaded(conn: psycopg.Connection, dataset: str) -> Loaded | None:
    row = conn.execute(
        "SELECT seed, rows, loaded_at FROM dataset_meta WHERE dataset = %s", (dataset,)
    ).fetchone()
    return Loaded(*row) if row else None


def wal_position(conn: psycopg.Connection) -> str:
    """Where the primary's WAL is written up to now: what a standby must replay to hold it all."""
    row = conn.execute(PRIMARY_WAL_POSITION).fetchone()
    assert row is not None
    return str(row[0])


def wait_for_replay(url: str, position: str, timeout: float, advance: Advance) -> float:
    """Return once the standby at `url` has replayed the primary's WAL up to `position`, with the
    seconds that took; raise StandbyBehind past `timeout` (a standby that cannot be reached
    meanwhile counts as behind). Calls advance(0) between questions, so a cancelled run stops."""
    started = time.monotonic()
    conn: psycopg.Connection | None = None
    state = "not reached yet"
    try:
        while True:
            remaining = timeout - (time.monotonic() - started)
            try:
                if conn is None:
                    conn = psycopg.connect(
                        url, autocommit=True, application_name=APPLICATION_NAME,
                        connect_timeout=max(2, int(remaining) + 1),
                    )  # fmt: skip
                row = conn.execute(STANDBY_REPLAYED, (position,)).fetchone()
                assert row is not None
                if row[1]:
                    return time.monotonic() - started
                state = f"replayed up to {row[0]}"
            except psycopg.OperationalError as exc:
                state = f"unreachable ({str(exc).strip()})"
                if conn is not None:
                    conn.close()
                    conn = None
            if remaining <= 0:
                raise StandbyBehind(
                    f"the standby has not replayed the load within {timeout:g} s "
                    f"({env_name('standby_replay_timeout')}): the primary is at {position}, "
                    f"the standby {state}. Redis still serves the previous version."
                )
            advance(0)
            time.sleep(min(_REPLAY_POLL_S, remaining))
    finally:
        if conn is not None:
            conn.close()


def _rebuild(
    conn: psycopg.Connection,
    reporter: Reporter,
    dataset: str,
    tables: tuple[str, ...],
    seed: int,
    rows: int,
    load: Callable[[], None],
) -> None:
    """Stage `tables` afresh with `load`, give them the live tables' keys, swap them in."""
    # The keys as the schema made them, so they come back exactly, whatever their names.
    keys = conn.execute(
        """
        SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)
        FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
        WHERE con.contype IN ('p', 'f') AND con.conrelid = ANY(%s::regclass[])
        ORDER BY con.contype = 'f'  -- primary keys before the foreign keys that use them
        """,
        ([f"public.{table}" for table in tables],),
    ).fetchall()
    with conn.transaction():
        # Unqualified names mean the staged tables from here on: load() and the key definitions
        # (whose REFERENCES name tables without a schema) then need no rewriting.
        conn.execute(f"SET LOCAL search_path = {STAGING_SCHEMA}, pg_catalog")
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")  # left by a load that died
            # CHECK constraints and defaults now; keys after the load.
            conn.execute(
                f"CREATE TABLE {table} "
                f"(LIKE public.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
        load()
        with reporter.phase(f"postgres {dataset} keys", rows) as advance:
            for table, name, definition in keys:
                conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            # Planner statistics now: without them the students query nests loops over every
            # subject (11 s to read the table back instead of 4 s).
            conn.execute(f"ANALYZE {', '.join(tables)}")
            advance(rows)
    _swap(conn, dataset, tables, seed, rows)


def _swap(
    conn: psycopg.Connection, dataset: str, tables: tuple[str, ...], seed: int, rows: int
) -> None:
    """Replace the live tables by the staged ones in one short transaction."""
    for attempt in range(1, _SWAP_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{_SWAP_LOCK_TIMEOUT}'")
                conn.execute(f"DROP TABLE {', '.join(f'public.{t}' for t in tables)}")
                for table in tables:
                    conn.execute(f"ALTER TABLE {STAGING_SCHEMA}.{table} SET SCHEMA public")
                conn.execute(
                    """
                    INSERT INTO public.dataset_meta (dataset, seed, rows) VALUES (%s, %s, %s)
                    ON CONFLICT (dataset) DO UPDATE
                    SET seed = EXCLUDED.seed, rows = EXCLUDED.rows,
                        loaded_at = EXCLUDED.loaded_at
                    """,
                    (dataset, seed, rows),
                )
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == _SWAP_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)  # a long reader holds a table: let it finish


def _copy(conn: psycopg.Connection, table: str, blocks: Iterable[str]) -> None:
    # FREEZE: the table was created in this transaction, so rows can be written frozen and
    # the first read (the Redis fill) need not set hint bits on every page.
    with conn.cursor().copy(f"COPY {table} FROM STDIN (FREEZE)") as copy:
        for block in blocks:
            copy.write(block)


def load_students(
    conn: psycopg.Connection, reporter: Reporter, seed: int, count: int, pools: generate.Pools
) -> None:
    def load() -> None:
        _copy(conn, "subjects", [generate.subjects_copy()])
        # One connection copies one table at a time: scores wait in a spooled file (memory up
        # to 256 MB, then disk) while the students stream in.
        with tempfile.SpooledTemporaryFile(
            max_size=256 << 20, mode="w+", encoding="utf-8", newline=""
        ) as scores:
            with reporter.phase("postgres students", count) as advance:

                def students() -> Iterator[str]:
                    for student_rows, score_rows, n in generate.student_blocks(seed, count, pools):
                        scores.write(score_rows)
                        yield student_rows
                        advance(n)

                _copy(conn, "students", students())
            score_rows = count * generate.SUBJECTS_PER_STUDENT
            with reporter.phase("postgres student_scores", score_rows) as advance:
                scores.seek(0)

                def score_blocks() -> Iterator[str]:
                    while block := scores.read(1 << 20):
                        yield block
                        advance(block.count("\n"))

                _copy(conn, "student_scores", score_blocks())

    _rebuild(conn, reporter, "students", STUDENT_TABLES, seed, count, load)


def load_bookings(
    conn: psycopg.Connection, reporter: Reporter, seed: int, count: int, pools: generate.Pools
) -> None:
    catalogue = generate.catalogue(seed, pools)
    tickets = [0] * len(catalogue.zones)

    def load() -> None:
        with reporter.phase("postgres bookings", count) as advance:

            def bookings() -> Iterator[str]:
                for block, n in generate.booking_blocks(seed, count, catalogue.zones, tickets):
                    yield block
                    advance(n)

            _copy(conn, "bookings", bookings())
        # Zones after the bookings, so their capacity holds the tickets just generated (the
        # foreign keys that would object come back only after the load).
        _copy(conn, "events", [catalogue.events])
        _copy(conn, "shows", [catalogue.shows])
        _copy(conn, "zones", [generate.zones_copy(catalogue.zones, tickets)])

    _rebuild(conn, reporter, "bookings", BOOKING_TABLES, seed, count, load)
