"""The seeder against the session's real Postgres and Redis (fixtures in conftest.py).

Tests that change the stores put the session's dataset back before they end, so the API tests
that share the servers always find it seeded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys

import psycopg
import pytest
import redis

from api.contract import BOOKINGS, DATASETS, LIVE_KEY, STUDENTS, Dataset
from seeder import postgres, redis_fill, seed
from seeder.cli import main
from seeder.redis_fill import MARKER_KEY, key_pattern, live_version

TABLES = ("subjects", "students", "student_scores", "events", "shows", "zones", "bookings")


def checksums(pg: psycopg.Connection) -> dict[str, str]:
    """Every table's content, ordered, as one md5 each: equal checksums, equal data."""
    return {
        table: pg.execute(
            f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
        ).fetchone()[0]
        for table in TABLES
    }


def loads(pg: psycopg.Connection) -> dict[str, tuple]:
    """dataset_meta: which load (seed, rows, loaded_at) Postgres holds per dataset."""
    rows = pg.execute("SELECT dataset, seed, rows, loaded_at FROM dataset_meta").fetchall()
    return {row[0]: row[1:] for row in rows}


def dataset_keys(rds: redis.Redis, dataset: Dataset) -> list[bytes]:
    """Every key of the dataset, whatever its version."""
    return sorted(rds.scan_iter(match=key_pattern(dataset), count=1000))


def buckets(rds: redis.Redis, dataset: Dataset) -> list[str]:
    """The dataset's keys without their version, after checking they all are the live one's:
    what two fills of the same data have in common."""
    live = live_version(rds, dataset)
    keys = dataset_keys(rds, dataset)
    assert {dataset.key_version(k) for k in keys} <= {live}, "keys of a non-live version"
    return sorted(k.decode().split(":", 2)[2] for k in keys)


def redis_records(rds: redis.Redis, dataset: Dataset) -> int:
    return sum(rds.hlen(key) for key in dataset_keys(rds, dataset))


def versions(rds: redis.Redis) -> dict[str, int]:
    return {d.name: live_version(rds, d) for d in DATASETS}


def sample_ids(pg: psycopg.Connection, dataset: Dataset, count: int = 40) -> list:
    """Random ids plus the first and the last, as the API would be asked for them."""
    column = "id" if dataset is STUDENTS else "id::text"
    ids = [row[0] for row in pg.execute(f"SELECT {column} FROM {dataset.name} ORDER BY id")]
    return [ids[0], ids[-1], *random.Random(5).sample(ids, count)]


def redis_values(pg: psycopg.Connection, rds: redis.Redis) -> dict[tuple[str, str], bytes | None]:
    values = {}
    for dataset in DATASETS:
        for record_id in sample_ids(pg, dataset):
            key, field = dataset.live_slot(rds, record_id)
            values[dataset.name, record_id] = rds.hget(key, field)
    return values


def content(pg: psycopg.Connection, rds: redis.Redis) -> dict:
    """The data both stores hold."""
    return {
        "checksums": checksums(pg),
        "keys": {d.name: buckets(rds, d) for d in DATASETS},
        "values": redis_values(pg, rds),
    }


def markers(rds: redis.Redis) -> dict[bytes, dict]:
    """{surge}:meta without the version and its time, which a refill of the same load changes."""
    return {
        name: {k: v for k, v in json.loads(raw).items() if k not in ("version", "switched_at")}
        for name, raw in rds.hgetall(MARKER_KEY).items()
    }


def snapshot(pg: psycopg.Connection, rds: redis.Redis) -> dict:
    """The data, and which loads and fills made it."""
    return content(pg, rds) | {"loads": loads(pg), "marker": markers(rds)}


def test_first_run_loads_the_settings_dataset(seeded, settings, pg, rds):
    assert loads(pg)["students"][:2] == (settings.seed, settings.students)
    assert loads(pg)["bookings"][:2] == (settings.seed, settings.bookings)
    assert pg.execute("SELECT min(id), max(id), count(*) FROM students").fetchone() == (
        10_000,
        10_000 + settings.students - 1,
        settings.students,
    )
    assert pg.execute("SELECT count(*) FROM bookings").fetchone()[0] == settings.bookings
    assert redis_records(rds, STUDENTS) == settings.students
    assert redis_records(rds, BOOKINGS) == settings.bookings
    for name, bytes_per_record in seeded.redis_bytes_per_record.items():
        assert 200 < bytes_per_record < 2_000, name


def test_second_run_changes_nothing(seeded, settings, pg, rds):
    before, live = snapshot(pg, rds), versions(rds)
    report = seed(settings)
    assert report.skipped
    assert report.phases == []
    assert all(d.postgres_skipped and d.redis_skipped for d in report.datasets.values())
    assert snapshot(pg, rds) == before
    assert versions(rds) == live


def test_reset_rebuilds_both_stores_with_the_same_data(seeded, settings, pg, rds, restore):
    before, live = snapshot(pg, rds), versions(rds)
    rds.set("foreign:key", "not the seeder's")
    rds.hset("students:100", "0", "{}")  # the key layout before versions: swept too
    report = seed(settings, reset=True)
    assert not any(d.postgres_skipped or d.redis_skipped for d in report.datasets.values())
    assert {p.name for p in report.phases} >= {
        "postgres students",
        "postgres student_scores",
        "postgres bookings",
        "redis students",
        "redis bookings",
    }
    after = snapshot(pg, rds)
    for dataset in ("students", "bookings"):
        assert after["loads"][dataset][2] > before["loads"][dataset][2]  # a new load...
    # ...of byte-identical data: the same seed gives the same rows and the same Redis bytes.
    assert after["checksums"] == before["checksums"]
    assert after["values"] == before["values"]
    # The same buckets in a new version, and only there: the old version was removed.
    assert after["keys"] == before["keys"]
    assert all(versions(rds)[name] > old for name, old in live.items())
    assert not rds.exists("students:100")
    assert rds.get("foreign:key") == b"not the seeder's"  # reset never flushes foreign data
    rds.delete("foreign:key")


def test_flushed_redis_is_refilled_from_postgres_alone(seeded, settings, pg, rds, restore):
    before = snapshot(pg, rds)
    first_rows = {t: pg.execute(f"SELECT xmin::text FROM {t} LIMIT 1").fetchone() for t in TABLES}
    rds.flushdb()
    report = seed(settings)
    assert all(d.postgres_skipped and not d.redis_skipped for d in report.datasets.values())
    assert {p.name for p in report.phases} == {"redis students", "redis bookings"}
    # Postgres untouched: same load, same rows, same row versions.
    assert loads(pg) == before["loads"]
    assert checksums(pg) == before["checksums"]
    assert {
        t: pg.execute(f"SELECT xmin::text FROM {t} LIMIT 1").fetchone() for t in TABLES
    } == first_rows
    assert snapshot(pg, rds) == before


def test_partly_evicted_redis_is_refilled(seeded, settings, pg, rds, restore):
    before = snapshot(pg, rds)
    rds.delete(*dataset_keys(rds, BOOKINGS)[:3])
    report = seed(settings)
    assert report.datasets["students"].redis_skipped
    assert not report.datasets["bookings"].redis_skipped
    assert snapshot(pg, rds) == before


def test_other_parameters_rebuild_only_that_dataset(seeded, settings, pg, rds, restore):
    content_before = content(pg, rds)
    fewer = dataclasses.replace(settings, bookings=settings.bookings // 2)
    report = seed(fewer)
    assert report.datasets["students"].postgres_skipped
    assert report.datasets["students"].redis_skipped
    assert not report.datasets["bookings"].postgres_skipped
    assert not report.datasets["bookings"].redis_skipped
    assert pg.execute("SELECT count(*) FROM bookings").fetchone()[0] == fewer.bookings
    # The bookings no longer in Postgres are gone from Redis too, not served stale.
    assert redis_records(rds, BOOKINGS) == fewer.bookings
    assert checksums(pg)["students"] == content_before["checksums"]["students"]

    other_seed = seed(dataclasses.replace(settings, seed=settings.seed + 1))
    assert not other_seed.datasets["students"].postgres_skipped
    assert checksums(pg)["students"] != content_before["checksums"]["students"]

    seed(settings)
    assert content(pg, rds) == content_before  # back to the session's data, exactly


def test_hashes_are_listpack_encoded(seeded, rds):
    for dataset in DATASETS:
        keys = dataset_keys(rds, dataset)
        assert keys
        pipe = rds.pipeline(transaction=False)
        for key in keys:
            pipe.object("encoding", key)
        assert set(pipe.execute()) == {b"listpack"}, dataset.name


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_redis_holds_exactly_what_the_api_would_render(seeded, pg, rds, dataset):
    for record_id in sample_ids(pg, dataset):
        row = pg.execute(dataset.select_one, (record_id,)).fetchone()
        assert row is not None
        key, field = dataset.live_slot(rds, record_id)
        assert rds.hget(key, field) == dataset.render(row), (dataset.name, record_id)


def test_students_look_like_exam_results(seeded, settings, pg):
    per_student = pg.execute(
        """
        SELECT s.id, s.stream, s.total, s.max_total, s.passed,
               count(*) AS papers, sum(x.score) AS score_sum, sum(sub.max_score) AS max_sum,
               bool_and(sub.stream IN ('both', s.stream)) AS own_stream
        FROM students s
        JOIN student_scores x ON x.student_id = s.id
        JOIN subjects sub ON sub.id = x.subject_id
        GROUP BY s.id
        """
    ).fetchall()
    assert len(per_student) == settings.students  # every student sat papers
    for _, _, total, max_total, passed, papers, score_sum, max_sum, own_stream in per_student:
        assert papers == 6 and own_stream
        assert total == score_sum and max_total == max_sum
        assert passed == (total * 2 >= max_total)
    pass_rate = sum(row[4] for row in per_student) / len(per_student)
    natural = sum(row[1] == "natural" for row in per_student) / len(per_student)
    assert 0.35 < pass_rate < 0.65
    assert 0.4 < natural < 0.7
    assert pg.execute("SELECT count(DISTINCT full_name) FROM students").fetchone()[0] > 1_000


def test_bookings_look_like_ticket_sales(seeded, pg):
    zones = pg.execute("SELECT id::text FROM zones ORDER BY id").fetchall()
    assert [z[0] for z in zones] == [
        f"b0000000-0000-{show:04d}-{zone:04d}-000000000000"
        for show in range(1, 10)
        for zone in range(1, 6)
    ]
    assert pg.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    assert pg.execute("SELECT count(*) FROM shows").fetchone()[0] == 9
    bad = pg.execute(
        """
        SELECT count(*) FILTER (WHERE substr(b.id::text, 15, 1) <> '4'
                                   OR substr(b.id::text, 20, 1) NOT IN ('8', '9', 'a', 'b')),
               count(*) FILTER (WHERE b.unit_price <> z.price
                                   OR b.total_price <> b.quantity * b.unit_price
                                   OR b.quantity NOT BETWEEN 1 AND 6),
               count(*) FILTER (WHERE (b.confirmed_at IS NOT NULL)
                                      <> (b.status IN ('confirmed', 'refunded'))
                                   OR (b.expires_at IS NOT NULL)
                                      <> (b.status IN ('pending', 'reserved', 'expired'))
                                   OR b.confirmed_at <= b.reserved_at
                                   OR b.expires_at <= b.reserved_at),
               count(*) FILTER (WHERE date_trunc('second', b.reserved_at) <> b.reserved_at)
        FROM bookings b JOIN zones z ON z.id = b.zone_id
        """
    ).fetchone()
    assert bad == (0, 0, 0, 0)  # v4 ids, zone prices, times that fit the status, whole seconds
    statuses = dict(pg.execute("SELECT status, count(*) FROM bookings GROUP BY status").fetchall())
    assert set(statuses) == {"pending", "reserved", "confirmed", "cancelled", "expired", "refunded"}
    assert max(statuses, key=statuses.get) == "confirmed"
    oversold = pg.execute(
        """
        SELECT count(*) FROM zones z
        WHERE z.capacity < (SELECT coalesce(sum(quantity), 0) FROM bookings WHERE zone_id = z.id)
        """
    ).fetchone()[0]
    assert oversold == 0


def test_cli_reports_in_sync_stores(seeded, settings, capsys):
    argv = [
        "--database-url", settings.database_url,
        "--redis-url", settings.redis_url,
        "--students", str(settings.students),
        "--bookings", str(settings.bookings),
        "--seed", str(settings.seed),
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"postgres students: in sync", out)
    assert re.search(r"redis bookings: in sync", out)


def test_cli_fails_cleanly_without_a_database(capsys):
    argv = ["--database-url", "postgresql://nobody@127.0.0.1:1/none", "--no-progress"]
    assert main(argv) == 1
    assert "store unavailable" in capsys.readouterr().err


def test_module_and_help_run():
    result = subprocess.run(
        [sys.executable, "-m", "seeder", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--students", "--bookings", "--seed", "--reset", "--no-progress"):
        assert flag in result.stdout


def test_redis_refusing_config_set_gets_a_warning_and_the_data(
    seeded, settings, redis_server, pg, rds, restore
):
    # Managed Redis services often forbid CONFIG: an ACL user without it stands in for one.
    rds.acl_setuser(
        "no-config",
        enabled=True,
        passwords=["+no-config"],
        keys=["*"],
        commands=["+@all", "-config"],
    )
    before = content(pg, rds)
    rds.hdel(MARKER_KEY, "students")  # make the run write the students again
    try:
        restricted = f"redis://no-config:no-config@127.0.0.1:{redis_server.port}/0"
        with pytest.warns(UserWarning, match="refused CONFIG SET hash-max-listpack"):
            report = seed(dataclasses.replace(settings, redis_url=restricted))
    finally:
        rds.acl_deluser("no-config")
    assert not report.datasets["students"].redis_skipped
    assert content(pg, rds) == before


def test_seeder_sessions_never_jit_compile(settings):
    """The fill's full-table reads cost the server a burst of JIT compilation otherwise, felt by
    the replicas when the keeper refills under load."""
    with postgres.connect(settings.database_url) as conn:
        row = conn.execute("SHOW jit").fetchone()
    assert row == ("off",)


def test_a_fill_redis_lost_midway_never_goes_live(seeded, settings, rds, restore):
    """A flush (or a restart) during a fill takes the records written so far with it: switching
    that version live would mark it whole while it lacks them, and the replicas answer ids
    missing from a whole version 404 without asking Postgres."""
    live_before = rds.hgetall(LIVE_KEY)
    with postgres.connect(settings.database_url) as conn:
        loaded = postgres.loaded(conn, STUDENTS.name)
        assert loaded is not None
        version = redis_fill.next_version(rds, STUDENTS)
        marker = redis_fill.fill(conn, rds, STUDENTS, loaded, lambda _n: None, version)
    rds.flushall()  # what a FLUSHALL or a restart without data does before the switch
    with pytest.raises(redis_fill.FillLost):
        redis_fill.switch(rds, marker, STUDENTS)
    assert rds.hget(LIVE_KEY, STUDENTS.name) is None
    assert live_before  # the session's dataset was live before; `restore` seeds it again
    # Unflushed, the same fill goes live.
    with postgres.connect(settings.database_url) as conn:
        version = redis_fill.next_version(rds, STUDENTS)
        marker = redis_fill.fill(conn, rds, STUDENTS, loaded, lambda _n: None, version)
    redis_fill.switch(rds, marker, STUDENTS)
    assert int(rds.hget(LIVE_KEY, STUDENTS.name)) == version
