"""Each replica's own copy of the records (api.local_cache) and the fast path that serves it
(api.fast_path): the same answers as the full path, dropped on a reseed, a refresh reaching
every replica, bounded in bytes, and HTTP caching (ETag, 304, Cache-Control)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from polling import poll
from replica import replica

from api.contract import BOOKINGS, DATASETS, LIVE_KEY, STUDENTS

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def lookups(client: TestClient, outcome: str) -> float:
    lookup = client.app.state.lookup
    return sum(lookup.metrics.outcomes[d.name].__dict__[outcome].value for d in DATASETS)


def sample_ids(pg, dataset, n: int) -> list[Any]:
    table = dataset.name
    rows = pg.execute(f"SELECT id FROM {table} ORDER BY random() LIMIT %s", (n,)).fetchall()
    return [row[0] if dataset is STUDENTS else str(row[0]) for row in rows]


@pytest.fixture(scope="module")
def copy_on(settings, seeded) -> Iterator[TestClient]:
    with replica(settings, local_cache_mb=64, admin_token=TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def copy_off(settings, seeded) -> Iterator[TestClient]:
    with replica(settings, local_cache_mb=0) as client:
        yield client


def test_the_whole_live_version_is_copied_at_start(copy_on, copy_off, settings):
    local = copy_on.app.state.lookup.local
    assert local.records(STUDENTS.name) == settings.students
    assert local.records(BOOKINGS.name) == settings.bookings
    for dataset in DATASETS:
        poll(lambda d=dataset: local.datasets[d.name].complete, 10, "complete copy")
    text = copy_on.get("/metrics").text  # what an operator (and make bench) waits on
    for dataset, count in ((STUDENTS, settings.students), (BOOKINGS, settings.bookings)):
        version = local.datasets[dataset.name].version
        assert f'surge_local_copy_complete{{dataset="{dataset.name}"}} 1.0' in text
        assert (
            f'surge_local_copy_records{{dataset="{dataset.name}",version="{version}"}} {count}.0'
        ) in text
    budget = re.search(r'^surge_local_copy_bytes\{kind="budget"\} (\S+)$', text, re.M)
    assert budget is not None and float(budget.group(1)) == 64 * 2**20
    assert 'surge_local_copy_complete{dataset="students"} 0.0' in copy_off.get("/metrics").text


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_fast_path_answers_exactly_as_the_full_path(copy_on, copy_off, pg, dataset):
    served_before = lookups(copy_on, "local_hit")
    ids = sample_ids(pg, dataset, 20)
    for record_id in ids:
        path = f"/{dataset.name}/{record_id}"
        body = copy_off.get(path).content
        for method in ("GET", "HEAD"):
            fast, full = copy_on.request(method, path), copy_off.request(method, path)
            assert fast.status_code == full.status_code == 200
            assert fast.content == full.content
            for header in ("content-type", "content-length", "etag", "cache-control"):
                assert fast.headers[header] == full.headers[header], header
        tag = full.headers["etag"]
        assert tag.startswith('"') and not tag.startswith('"W/')  # strong
        for client in (copy_on, copy_off):
            for sent in (tag, f'"other", {tag}', f"W/{tag}", "*"):
                unchanged = client.get(path, headers={"If-None-Match": sent})
                assert unchanged.status_code == 304, (sent, unchanged.text)
                assert unchanged.content == b"" and unchanged.headers["etag"] == tag
            changed = client.get(path, headers={"If-None-Match": '"something-else"'})
            assert changed.status_code == 200 and changed.content == body
    # every GET/HEAD/conditional GET above on copy_on came from the copy
    assert lookups(copy_on, "local_hit") - served_before == len(ids) * 7
    assert lookups(copy_off, "local_hit") == 0


def test_unknown_ids_are_answered_from_a_complete_copy(copy_on, copy_off, settings):
    """The copy holds every record of the live version (the seeder's count): an id it lacks
    is not there, so the 404 comes without asking Redis or Postgres, in the same bytes."""
    local = copy_on.app.state.lookup.local
    for dataset in DATASETS:
        poll(lambda d=dataset: local.datasets[d.name].complete, 10, "complete copy")
    before = {k: lookups(copy_on, k) for k in ("not_in_live_version", "not_found", "redis_hit")}
    unknown = [f"/students/{999_999_000 + i}" for i in range(5)]
    unknown += [f"/bookings/00000000-0000-4000-8000-00000000000{i}" for i in range(5)]
    for path in unknown:
        ours, full = copy_on.get(path), copy_off.get(path)
        assert ours.status_code == full.status_code == 404
        assert ours.content == full.content
        assert ours.headers["content-type"] == full.headers["content-type"]
        assert ours.headers["content-length"] == full.headers["content-length"]
    after = {k: lookups(copy_on, k) for k in before}
    assert after == before | {"not_in_live_version": before["not_in_live_version"] + 10}


def test_a_record_added_and_refreshed_is_served_by_a_complete_copy(copy_on, pg):
    added = 999_999_002
    assert copy_on.get(f"/students/{added}").status_code == 404
    pg.execute(
        "INSERT INTO students SELECT %s, full_name, sex, birth_date, school, region, stream, "
        "exam_year, total, max_total, passed FROM students WHERE id = 10000",
        (added,),
    )
    try:
        assert copy_on.post(f"/admin/students/{added}/refresh", headers=AUTH).status_code == 200
        assert copy_on.get(f"/students/{added}").status_code == 200
    finally:
        pg.execute("DELETE FROM students WHERE id = %s", (added,))
        copy_on.post(f"/admin/students/{added}/refresh", headers=AUTH)
    assert copy_on.get(f"/students/{added}").status_code == 404


def test_cache_control_states_the_staleness_bound(copy_on, settings):
    response = copy_on.get("/students/10000")
    assert response.headers["cache-control"] == (
        f"public, max-age={settings.http_max_age}, stale-if-error={settings.http_stale_if_error}"
    )


def test_the_copy_answers_without_redis(copy_on, rds, pg, restore):
    (student,) = sample_ids(pg, STUDENTS, 1)
    before = copy_on.get(f"/students/{student}").content
    assert rds.hdel(*STUDENTS.live_slot(rds, student)) == 1
    hits = lookups(copy_on, "local_hit")
    assert copy_on.get(f"/students/{student}").content == before
    assert lookups(copy_on, "local_hit") == hits + 1


def test_bad_ids_and_unknown_records_still_go_the_full_way(copy_on):
    assert copy_on.get("/students/007").status_code == 400
    assert copy_on.get("/students/999999998").status_code == 404
    assert copy_on.get("/students/10000/extra").status_code == 404
    assert copy_on.post("/students/10000").status_code == 405


def test_a_new_live_version_replaces_the_copy(copy_on, rds, restore):
    """A reseed switches {surge}:live: the replica drops the old version's copy and warms the
    new one, within its live-version refresh interval."""
    student = 10_007
    old = copy_on.get(f"/students/{student}").content
    version = int(rds.hget(LIVE_KEY, STUDENTS.name)) + 1
    new = old.replace(b'"name":"', b'"name":"Reseeded ', 1)
    key, field = STUDENTS.slot(student, version)
    rds.hset(key, field, new)
    rds.hset(LIVE_KEY, STUDENTS.name, version)
    try:
        poll(lambda: copy_on.get(f"/students/{student}").content == new, 3, "new version")
        local = copy_on.app.state.lookup.local
        poll(lambda: local.records(STUDENTS.name) == 1, 3, "copy of the new version")
        assert local.datasets[STUDENTS.name].version == version
    finally:
        rds.delete(key)


def test_a_flushed_redis_leaves_the_copy_serving(copy_on, rds, restore):
    """Redis restarted empty (or FLUSHALL): nothing changed in Postgres, so the replica keeps
    its copy (reading and writing Redis as "unseeded" meanwhile, like every other replica)."""
    local = copy_on.app.state.lookup.local
    version = local.datasets[STUDENTS.name].version
    held = local.records(STUDENTS.name)
    before = copy_on.get("/students/10011").content
    rds.flushall()
    lookup = copy_on.app.state.lookup
    poll(lambda: lookup.live[STUDENTS.name] == 0, 3, "{surge}:live read as gone")
    assert local.datasets[STUDENTS.name].version == version
    assert local.records(STUDENTS.name) == held
    hits = lookups(copy_on, "local_hit")
    assert copy_on.get("/students/10011").content == before
    assert lookups(copy_on, "local_hit") == hits + 1


def test_a_refill_from_the_same_postgres_load_keeps_the_copy(copy_on, rds, settings, restore):
    """Redis flushed, then refilled by the seeder (as the redis-keeper does) from the same
    Postgres load: a new version, the same bytes. The replica keeps its copy as that version
    instead of dropping it and sending every lookup to Redis while it warms again."""
    from seeder import seed

    local = copy_on.app.state.lookup.local
    cache = local.datasets[STUDENTS.name]
    poll(lambda: cache.complete, 10, "complete copy")
    held, old_version = local.records(STUDENTS.name), cache.version
    rds.flushall()
    seed(settings)
    new_version = int(rds.hget(LIVE_KEY, STUDENTS.name))
    assert new_version != old_version
    poll(lambda: local.datasets[STUDENTS.name].version == new_version, 3, "the new version")
    assert local.datasets[STUDENTS.name] is cache  # the same copy, not a fresh warm-up
    assert local.records(STUDENTS.name) == held and cache.complete
    hits = lookups(copy_on, "local_hit")
    assert copy_on.get("/students/10011").status_code == 200
    assert lookups(copy_on, "local_hit") == hits + 1


def test_a_copy_short_of_records_is_completed_after_a_refill(rds, settings, seeded, restore):
    """A copy warmed while Redis lacked a record (a cold Redis being written back) is kept by a
    refill from the same Postgres load, and the warm-up then copies what it lacks."""
    from seeder import seed

    rds.hdel(*STUDENTS.live_slot(rds, 10_050))
    with replica(settings, local_cache_mb=64) as client:
        local = client.app.state.lookup.local
        assert not local.datasets[STUDENTS.name].complete
        assert local.records(STUDENTS.name) == settings.students - 1
        old_version = int(rds.hget(LIVE_KEY, STUDENTS.name))
        rds.delete(*rds.keys(STUDENTS.version_pattern(old_version)))  # the seeder refills
        seed(settings)
        new_version = int(rds.hget(LIVE_KEY, STUDENTS.name))
        assert new_version != old_version
        poll(lambda: local.datasets[STUDENTS.name].complete, 10, "the copy completed")
        assert local.datasets[STUDENTS.name].version == new_version
        assert local.records(STUDENTS.name) == settings.students


def test_a_flush_then_another_load_under_the_same_version_number_replaces_the_copy(
    copy_on, rds, settings, restore
):
    """FLUSHALL loses the version counter: a seed with other data after it fills version 1
    again. The copy of the old load's version 1 must go, not be taken for the new one."""
    from seeder import seed

    local = copy_on.app.state.lookup.local
    poll(lambda: local.datasets[STUDENTS.name].complete, 10, "complete copy")
    before = copy_on.get("/students/10012").content
    rds.flushall()
    seed(dataclasses.replace(settings, seed=settings.seed + 1))
    after = rds.hget(*STUDENTS.live_slot(rds, 10_012))
    assert after is not None and after != before
    poll(lambda: copy_on.get("/students/10012").content == after, 5, "the new load's record")
    poll(lambda: local.datasets[STUDENTS.name].complete, 10, "a complete copy of the new load")


def test_a_refresh_reaches_every_replica(copy_on, settings, pg, rds):
    """POST /admin/{dataset}/{id}/refresh on one replica: every other drops its copy of that
    record within the live-version refresh interval (they read {surge}:refreshed with it)."""
    student = 10_043
    with replica(settings, local_cache_mb=64) as other:
        original = other.get(f"/students/{student}").json()
        assert copy_on.get(f"/students/{student}").json() == original
        pg.execute("UPDATE students SET full_name = 'Corrected Name' WHERE id = %s", (student,))
        corrected = original | {"name": "Corrected Name"}
        try:
            assert other.get(f"/students/{student}").json() == original  # its copy, as before
            response = copy_on.post(f"/admin/students/{student}/refresh", headers=AUTH)
            assert response.status_code == 200, response.text
            assert copy_on.get(f"/students/{student}").json() == corrected  # at once
            took = poll(lambda: other.get(f"/students/{student}").json() == corrected, 3, "other")
            assert took <= settings.live_refresh_interval + 0.5
        finally:
            pg.execute(
                "UPDATE students SET full_name = %s WHERE id = %s", (original["name"], student)
            )
            copy_on.post(f"/admin/students/{student}/refresh", headers=AUTH)
        poll(lambda: other.get(f"/students/{student}").json() == original, 3, "restored")


def test_a_small_budget_bounds_the_copy(settings, seeded):
    with replica(settings, local_cache_mb=1) as client:
        local = client.app.state.lookup.local
        assert 0 < local.used <= 2**20
        assert local.records(STUDENTS.name) + local.records(BOOKINGS.name) < (
            settings.students + settings.bookings
        )
        assert client.get("/students/10000").status_code == 200  # the rest from Redis


def test_both_datasets_warm_side_by_side_without_starting_over(settings, seeded, caplog):
    """The warm-ups of the two datasets run at once: neither may find the other holding its
    Redis connection (a shared one sent the second back to the start, again and again)."""
    with caplog.at_level("INFO", logger="surge.lookup"), replica(settings, local_cache_mb=64):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "surge.lookup"]
    assert not [m for m in messages if "interrupted" in m], messages
    for dataset in DATASETS:
        assert any(m.startswith(f"local copy of {dataset.name} ") for m in messages), messages
