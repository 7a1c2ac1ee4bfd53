"""SURGE_REDIS_MODE=cluster against a real Redis Cluster on loopback: 3 masters and 3 replicas
(redis-server processes with cluster-enabled, created by `redis-cli --cluster create`).

The API, the seeder and the keeper over the cluster serve the very bytes of the single-node path;
a reseed, a master's death and a slot migration under reads fail no request and mix no versions;
an emptied cluster is refilled by the keeper. Replicas' own copies are off (the session's
settings): every lookup reaches Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from litestar.testing import TestClient
from polling import poll
from replica import keeper, replica

from core.contract import (
    CONTROL_KEYS,
    DATASETS,
    FILLING_KEY,
    LIVE_KEY,
    MARKER_KEY,
    STUDENTS,
    Dataset,
)
from core.settings import Settings
from seeder import redis_fill, seed
from stack.servers import RedisClusterServer, free_cluster_ports

READ_S = 60.0  # the longest any reader below runs, whatever happens


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    path = Path(tempfile.mkdtemp(prefix="surge-cluster-"))
    server = RedisClusterServer(path, free_cluster_ports(6), masters=3, node_timeout_ms=1000)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def on_cluster(settings: Settings, seeded: Any, cluster: RedisClusterServer) -> Settings:
    """The session's settings over the cluster, which holds the session's dataset."""
    s = settings.replace(redis_mode="cluster", redis_url=cluster.url)
    seed(s)
    return s


@pytest.fixture
def crc(on_cluster: Settings) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster.from_url(on_cluster.stores.redis_url)
    yield client
    client.close()


@pytest.fixture
def cluster_restored(on_cluster: Settings, cluster: RedisClusterServer) -> Iterator[None]:
    """Leave the cluster whole, healthy and holding the session's dataset."""
    yield
    for node in cluster.nodes:
        node.start()
    poll(cluster.healthy, 30, "cluster healthy again")
    seed(on_cluster)


def all_ids(pg: psycopg.Connection, dataset: Dataset) -> list[Any]:
    column = "id" if dataset is STUDENTS else "id::text"
    return [r[0] for r in pg.execute(f"SELECT {column} FROM {dataset.name} ORDER BY id")]


def rendered(pg: psycopg.Connection, dataset: Dataset, record_id: Any) -> bytes:
    row = pg.execute(dataset.select_one, (record_id,)).fetchone()
    assert row is not None
    return dataset.render(row)


class Reader(threading.Thread):
    """GETs the paths round and round until stopped (or READ_S), keeping (path, status, body)."""

    def __init__(self, client: TestClient, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.paths = client, paths
        self.stop = threading.Event()
        self.responses: list[tuple[str, int, bytes]] = []

    def run(self) -> None:
        deadline = time.monotonic() + READ_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            for path in self.paths:
                response = self.client.get(path)
                self.responses.append((path, response.status_code, response.content))

    def failed(self) -> list[tuple[str, int, bytes]]:
        return [r for r in self.responses if r[1] != 200]


def outcomes(client: TestClient, name: str) -> float:
    """Lookups of students answered so far by the given outcome (redis_hit, fallback_hit)."""
    lookup = client.app.state.lookup
    return float(getattr(lookup.metrics.outcomes[STUDENTS.name], name).value)


def test_the_layout_spreads_records_and_keeps_control_keys_on_one_slot(on_cluster, crc, cluster):
    slots = {crc.keyslot(key) for key in CONTROL_KEYS}
    assert len(slots) == 1, "the switch's MULTI needs every control key in one slot"
    per_node = {}
    for node in crc.get_primaries():
        keys = node.redis_connection.dbsize()
        per_node[node.name] = keys
    assert len(per_node) == 3 and all(count > 0 for count in per_node.values()), per_node
    assert set(crc.hgetall(LIVE_KEY)) == {d.name.encode() for d in DATASETS}


def test_every_record_through_the_api_is_byte_identical_to_the_single_node_path(
    settings, on_cluster, pg
):
    with replica(settings) as single, replica(on_cluster) as clustered:
        for dataset in DATASETS:
            ids = all_ids(pg, dataset)
            assert len(ids) in (settings.dataset.students, settings.dataset.bookings)
            for record_id in ids:
                path = f"/{dataset.name}/{record_id}"
                one, many = single.get(path), clustered.get(path)
                assert (one.status_code, many.status_code) == (200, 200), path
                assert many.content == one.content, path
                assert many.headers.get("etag") == one.headers.get("etag")
        assert outcomes(clustered, "fallback_hit") == 0  # all of it from the cluster's hashes
        assert outcomes(clustered, "redis_hit") == settings.dataset.students


def test_a_fill_is_pipelined_per_node_not_a_round_trip_per_hash(on_cluster, crc, pg, monkeypatch):
    sends: list[int] = []  # HSETs carried by each write to a node
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        data = command if isinstance(command, bytes) else b"".join(command)
        if FILLING_KEY.encode() not in data:  # the fill's own bookkeeping, not a record hash
            sends.append(data.count(b"\r\nHSET\r\n"))
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    with closing(redis_fill.connect(on_cluster.stores.redis_url, cluster=True)) as client:
        from seeder import postgres
        from seeder.progress import Reporter

        pg_load = postgres.loaded(pg, STUDENTS.name)
        assert pg_load is not None
        version = redis_fill.next_version(client, STUDENTS)
        with Reporter().phase("redis students", pg_load.rows) as advance:
            marker = redis_fill.fill(pg, client, STUDENTS, pg_load, advance, version)
        monkeypatch.undo()
        redis_fill.sweep(client, STUDENTS)  # the unswitched version goes again
        client.unlink(*redis_fill.stale_keys(client, STUDENTS))
    writes = [n for n in sends if n]
    assert sum(writes) == marker.keys  # one HSET a hash
    # 2,000 students are one batch: one write to each of the 3 masters, not one per hash.
    assert len(writes) == 3, writes


def test_reseed_under_reads_serves_old_or_new_never_a_mix(
    on_cluster, pg, cluster_restored, restore
):
    paths = []
    for dataset in DATASETS:
        paths += [f"/{dataset.name}/{i}" for i in all_ids(pg, dataset)[::50]]
    with replica(on_cluster) as client:
        old = {path: client.get(path).content for path in paths}
        reader = Reader(client, paths)
        reader.start()
        try:
            poll(lambda: len(reader.responses) > len(paths), 10, "reads started")
            report = seed(on_cluster.replace(seed=on_cluster.dataset.seed + 1))
            assert not report.datasets[STUDENTS.name].redis_skipped
            student = next(p for p in paths if p.startswith("/students/"))
            new_student = rendered(pg, STUDENTS, int(student.rsplit("/", 1)[1]))
            poll(lambda: client.get(student).content == new_student, 10, "new version served")
            poll(lambda: len(reader.responses) > 3 * len(paths), 20, "reads after the switch")
        finally:
            reader.stop.set()
            reader.join(READ_S)
    # Bookings get other ids from another seed: an old id is served as before, then is unknown.
    failed = [r for r in reader.failed() if not (r[0].startswith("/bookings/") and r[1] == 404)]
    assert failed == []
    new_students = {
        p: rendered(pg, STUDENTS, int(p.rsplit("/", 1)[1])) for p in paths if "stud" in p
    }
    mixed = [
        (path, body)
        for path, status, body in reader.responses
        if status == 200 and body not in (old[path], new_students.get(path))
    ]
    assert mixed == [], "a record served neither as before nor as after"
    assert any(body == new_students[p] for p, _, body in reader.responses if p in new_students)
    with closing(redis_fill.connect(on_cluster.stores.redis_url, cluster=True)) as client:
        assert all(redis_fill.stale_keys(client, d) == [] for d in DATASETS)


def test_a_master_killed_under_reads_fails_nothing_and_its_replica_takes_over(
    on_cluster, cluster, crc, pg, cluster_restored
):
    paths = [f"/students/{i}" for i in all_ids(pg, STUDENTS)[::20]]
    victim = cluster.node_of_key(STUDENTS.live_slot(crc, 10_000)[0])
    with replica(on_cluster) as client:
        reader = Reader(client, paths)
        reader.start()
        try:
            poll(lambda: len(reader.responses) > len(paths), 10, "reads started")
            pid = victim.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            poll(cluster.healthy, 20, "a replica promoted in the killed master's place")
            promoted = time.monotonic() - killed
            assert cluster.node_of_key(STUDENTS.live_slot(crc, 10_000)[0]) is not victim
            hits = outcomes(client, "redis_hit")
            poll(lambda: outcomes(client, "redis_hit") > hits + 100, 20, "Redis hits resumed")
        finally:
            reader.stop.set()
            reader.join(READ_S)
        fallbacks = outcomes(client, "fallback_hit")
    print(f"[cluster] failover {promoted:.1f} s, {len(reader.responses)} reads, "
          f"{fallbacks:.0f} from Postgres")  # fmt: skip
    assert reader.failed() == []
    assert len(reader.responses) > 2 * len(paths)


def test_slots_migrated_under_reads_fail_nothing(on_cluster, cluster, crc, pg, cluster_restored):
    paths = [f"/students/{i}" for i in all_ids(pg, STUDENTS)[::10]]
    expected = {p: rendered(pg, STUDENTS, int(p.rsplit("/", 1)[1])) for p in paths}
    source = cluster.node_of_key(STUDENTS.live_slot(crc, 10_000)[0])
    ranges = cluster.slot_ranges()
    masters = {port for *_, port in ranges}
    target = next(n for n in cluster.nodes if n is not source and n.port in masters)
    # Every slot of the source, so that each of its record hashes moves.
    slots = sum(last - first + 1 for first, last, port in ranges if port == source.port)
    before = {key: cluster.node_of_key(key).port for key in crc.scan_iter(match="students:*")}
    with replica(on_cluster) as client:
        reader = Reader(client, paths)
        reader.start()
        try:
            poll(lambda: len(reader.responses) > len(paths), 10, "reads started")
            cluster.cli(
                "--cluster", "reshard", f"127.0.0.1:{source.port}",
                "--cluster-from", cluster.node_id(source.port),
                "--cluster-to", cluster.node_id(target.port),
                "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "1",
            )  # fmt: skip
            time.sleep(0.5)  # reads on the new map too
        finally:
            reader.stop.set()
            reader.join(READ_S)
        redis_hits, fallbacks = outcomes(client, "redis_hit"), outcomes(client, "fallback_hit")
    moved = [k for k, port in before.items() if cluster.node_of_key(k).port != port]
    assert moved, "no record hash changed nodes"
    assert reader.failed() == []
    assert all(body == expected[path] for path, _, body in reader.responses)
    # MOVED and ASK are followed: the reads stayed on Redis, not on the Postgres fallback.
    assert fallbacks <= 0.01 * redis_hits, (redis_hits, fallbacks)


def test_the_keeper_refills_a_cluster_emptied_on_every_master(
    on_cluster, crc, pg, tmp_path, cluster_restored
):
    log = tmp_path / "keeper.log"
    with keeper(on_cluster, log) as proc:  # SURGE_REDIS_MODE=cluster among its settings
        assert redis_fill.looks_whole(crc, DATASETS)
        for node in crc.get_primaries():
            node.redis_connection.flushall()
        assert crc.dbsize() == 0  # every master's keys summed
        took = poll(lambda: redis_fill.looks_whole(crc, DATASETS), 30, "cluster refilled")
        poll(lambda: "surge-seed --watch:" in log.read_text(), 30, "the keeper's report")
    print(f"[cluster] keeper refilled {took:.2f} s after FLUSHALL on every master")
    assert proc.returncode == 0, log.read_text()
    assert set(crc.hgetall(MARKER_KEY)) == {d.name.encode() for d in DATASETS}
    for dataset in DATASETS:
        ids = all_ids(pg, dataset)
        keys_fields = [dataset.live_slot(crc, i) for i in ids]
        pipe = crc.pipeline()
        for key, field in keys_fields:
            pipe.hget(key, field)
        assert all(body is not None for body in pipe.execute()), dataset.name
