"""`surge-seed --watch` (the redis-keeper of both launchers): a Redis that restarted empty or
was flushed is refilled from Postgres by itself, live versions and metadata included."""

from __future__ import annotations

import time

from polling import poll
from replica import keeper

from core.contract import DATASETS, LIVE_KEY, MARKER_KEY, STUDENTS
from seeder import redis_fill


def test_a_flushed_redis_is_refilled_without_anyone_asking(settings, seeded, rds, pg, tmp_path):
    log = tmp_path / "keeper.log"
    with keeper(settings, log) as proc:
        assert redis_fill.looks_whole(rds, DATASETS)
        time.sleep(1.0)  # a few rounds over a whole Redis: nothing to do, nothing printed
        rds.flushall()
        flushed = time.monotonic()
        while not redis_fill.looks_whole(rds, DATASETS):
            assert time.monotonic() - flushed < 30, "Redis not refilled within 30 s"
            time.sleep(0.05)
        took = time.monotonic() - flushed
        assert set(rds.hgetall(LIVE_KEY)) == {d.name.encode() for d in DATASETS}
        assert set(rds.hgetall(MARKER_KEY)) == {d.name.encode() for d in DATASETS}
        (student,) = pg.execute("SELECT max(id) FROM students").fetchone()
        assert rds.hget(*STUDENTS.live_slot(rds, student)) is not None
        print(f"[keeper] refilled {took:.2f} s after FLUSHALL")
        # The seeder reports once its run is over (after the switch: sweep, snapshot).
        poll(lambda: "surge-seed --watch:" in log.read_text(), 30, "the keeper's report")
    out = log.read_text()
    assert proc.returncode == 0, out
    # One line: the refill; the rounds over a whole Redis said nothing.
    assert out.count("surge-seed --watch:") == 1, out
