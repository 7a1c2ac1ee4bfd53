"""Redis side: copy each dataset from Postgres into a new version of the contract's hashes, switch
readers to it, remove the old one; and know when not to.

Redis is filled from Postgres, never from the generator, with the contract's select_all, render()
and slot(): the seeder and the API's read-through then write the same bytes under the same field.

Zero-downtime: every key carries its dataset version ("students:v3:1234"). A fill writes a version
nobody reads yet; switch() then records it in `{surge}:live` (and its marker) in one MULTI, and each
API replica moves to it within its refresh interval. After a grace period longer than that, sweep()
UNLINKs every other version. A reader therefore sees one version per lookup, never a mix, and never
a missing key. Redis holds both versions of a dataset during a reseed (twice its memory).

`{surge}:meta` remembers, per dataset, which Postgres load the live version was filled from (seed,
rows, dataset_meta.loaded_at) and how many hashes that made. A run whose Postgres load matches, and
whose hashes are all still there, leaves Redis alone; anything else (a flush, an eviction, a
different load) fills a new version.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import orjson
import psycopg
import redis

from core.contract import (
    FILLING_KEY,
    LEGACY_CONTROL_KEYS,
    LIVE_KEY,
    MARKER_KEY,
    REDIS_HASH_CONFIG,
    VERSIONS_KEY,
    Dataset,
    parse_version,
    stamp,
)
from seeder.postgres import Loaded
from seeder.progress import Advance

# VERSIONS_KEY holds the last version handed out per dataset: versions are never reused, so a
# fill that died midway cannot be mistaken for a live one (its keys are swept by the next run).

# One Redis, or a Redis Cluster (SURGE_REDIS_MODE=cluster). The same calls work on both: SCAN,
# CONFIG SET and BGSAVE go to every node, UNLINK is split by slot, a pipeline is grouped by node
# (each batch one write to every node, then one read), the switch's MULTI stays on the {surge}
# slot.
Client = redis.Redis | redis.RedisCluster

_FETCH_ROWS = 5_000  # rows per network chunk from Postgres (libpq chunked-rows mode)
_BATCH_RECORDS = 5_000  # records per pipeline round trip to Redis
_PACED_BATCH_RECORDS = 1_000
_SCAN_COUNT = 1_000
_MEMORY_SAMPLE = 1_000  # hashes whose memory is measured


@dataclass(frozen=True, slots=True)
class Filled:
    """What `{surge}:meta` records for one dataset: the fill behind its live version."""

    version: int
    seed: int
    rows: int
    loaded_at: str  # dataset_meta.loaded_at of the Postgres load the hashes came from
    records: int
    keys: int
    bytes_per_record: float
    switched_at: str = ""
    """When this version went live (empty in markers written before versions had a time)."""


def connect(url: str, *, cluster: bool = False) -> Client:
    """A client of the Redis at `url`; `cluster`: of the Redis Cluster that node belongs to."""
    # Generous timeout: a pipeline of several MB takes a moment, unlike the API's lookups.
    if cluster:
        return redis.RedisCluster.from_url(url, socket_timeout=60)
    return redis.Redis.from_url(url, socket_timeout=60)


def configure(client: Client) -> None:
    """Apply the contract's hash limits so the hashes stay listpack-encoded (compact).

    Managed Redis services often refuse CONFIG SET: then the data still loads, only bigger."""
    for name, value in REDIS_HASH_CONFIG.items():
        try:
            client.config_set(name, value)
        except redis.ResponseError as exc:
            warnings.warn(
                f"Redis refused CONFIG SET {name} {value} ({exc}); hashes may not be "
                f"listpack-encoded and will take more memory",
                stacklevel=2,
            )


def key_pattern(dataset: Dataset, version: int | None = None) -> str:
    """Keys of one version of the dataset, or (None) of all its versions."""
    return dataset.version_pattern(version)


def live_version(client: Client, dataset: Dataset) -> int:
    return parse_version(client.hget(LIVE_KEY, dataset.name))


def next_version(client: Client, dataset: Dataset) -> int:
    """A version no fill has used: above the counter and above the live one (should the counter
    have been deleted on its own)."""
    version = client.hincrby(VERSIONS_KEY, dataset.name, 1)
    live = live_version(client, dataset)
    if version <= live:
        version = live + 1
        client.hset(VERSIONS_KEY, dataset.name, version)
    return version


def filled(client: Client, dataset: Dataset) -> Filled | None:
    raw = client.hget(MARKER_KEY, dataset.name)
    try:
        return Filled(**orjson.loads(raw)) if raw else None
    except (orjson.JSONDecodeError, TypeError):  # written by another release: refill
        return None


def in_sync(client: Client, dataset: Dataset, pg: Loaded) -> Filled | None:
    """The marker of a fill from exactly this Postgres load, if it is the live version and every
    hash it made is there."""
    marker = filled(client, dataset)
    if (
        marker is None
        or (marker.seed, marker.rows, marker.loaded_at) != (pg.seed, pg.rows, stamp(pg.loaded_at))
        or marker.version != live_version(client, dataset)
        or _count_keys(client, dataset, marker.version) != marker.keys
    ):
        return None
    return marker


def looks_whole(client: Client, datasets: Iterable[Dataset]) -> bool:
    """A cheap check (two small reads a dataset, no SCAN) that every dataset has a live version
    and its marker: what a Redis that restarted empty or was flushed has lost."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(LIVE_KEY)
    pipe.hgetall(MARKER_KEY)
    live, markers = pipe.execute()
    for dataset in datasets:
        marker = markers.get(dataset.name.encode())
        version = live.get(dataset.name.encode())
        if marker is None or version is None:
            return False
        if orjson.loads(marker).get("version") != parse_version(version):
            return False
    return True


def _keys(client: Client, dataset: Dataset, version: int | None = None) -> list[bytes]:
    return list(client.scan_iter(match=key_pattern(dataset, version), count=_SCAN_COUNT))


def _count_keys(client: Client, dataset: Dataset, version: int) -> int:
    return len(_keys(client, dataset, version))


def _bytes_per_record(client: Client, keys: list[bytes]) -> float:
    """MEMORY USAGE (value, key name and its dict entry) over HLEN of ~1,000 of the hashes.

    Sampling the hashes themselves, unlike a used_memory delta, is not thrown off by the other
    dataset filling at the same time or by other clients."""
    sample = keys[:: max(1, len(keys) // _MEMORY_SAMPLE)]
    pipe = client.pipeline(transaction=False)
    for key in sample:
        pipe.memory_usage(key, samples=0)  # samples=0: every element, exact
        pipe.hlen(key)
    replies = pipe.execute()
    records = sum(replies[1::2])
    return sum(replies[0::2]) / records if records else 0.0


def _unlink(client: Client, keys: list[bytes]) -> int:
    # SCAN-sized batches never block Redis; UNLINK frees the memory in the background.
    return sum(client.unlink(*keys[i : i + _SCAN_COUNT]) for i in range(0, len(keys), _SCAN_COUNT))


class FillLost(redis.RedisError):
    """Redis lost part of a fill (flushed or restarted during it): the version stays unswitched
    and the next run fills a new one."""


def switch(client: Client, marker: Filled, dataset: Dataset) -> Filled:
    """Make `marker.version` the live version: marker and pointer change in one MULTI/EXEC, so
    `{surge}:meta` always describes what `{surge}:live` points at; only if Redis kept the whole
    fill (its FILLING_KEY entry, watched, still there)."""
    marker = replace(marker, switched_at=stamp(datetime.now(UTC)))

    def make_live(pipe: redis.client.Pipeline) -> None:
        if parse_version(pipe.hget(FILLING_KEY, dataset.name)) != marker.version:
            raise FillLost(f"{dataset.name} v{marker.version}: Redis lost records during the fill")
        pipe.multi()
        pipe.hset(MARKER_KEY, dataset.name, orjson.dumps(asdict(marker)))
        pipe.hset(LIVE_KEY, dataset.name, marker.version)
        pipe.hdel(FILLING_KEY, dataset.name)

    client.transaction(make_live, FILLING_KEY)  # runs again if the entry changed meanwhile
    return marker


def snapshot(client: Client) -> bool:
    """Ask Redis to write an RDB snapshot now (in a forked child): a Redis that restarts, even
    after a crash, loads the last seed instead of coming back empty. False when it refuses (a
    managed Redis, or a snapshot already running)."""
    try:
        client.bgsave()
    except redis.ResponseError:
        return False
    return True


def stale_keys(client: Client, dataset: Dataset) -> list[bytes]:
    """Keys of every version but the live one: the previous fill, a fill that died midway,
    write-backs of the API to a version it still believed live, keys from before versions."""
    live = live_version(client, dataset)
    stale = [key for key in _keys(client, dataset) if dataset.key_version(key) != live]
    # The layout before versions ("students:1234", "bookings:0a1f"): what an upgraded Redis holds.
    legacy = client.scan_iter(match=f"{dataset.name}:[0-9a-f]*", count=_SCAN_COUNT)
    return stale + list(legacy)


def sweep(client: Client, dataset: Dataset) -> int:
    """UNLINK every version of the dataset but the live one. Other data is left alone."""
    return _unlink(client, stale_keys(client, dataset))


def drop_legacy_control_keys(client: Client) -> int:
    """UNLINK the control keys as named before they had a hash tag ("surge:live"): the Redis
    they were in has just been filled under the new names, and nothing reads the old ones."""
    return int(client.unlink(*LEGACY_CONTROL_KEYS))


class Pacer:
    """Paces a refill batch by batch at up to `rate` records a second, and slower while the
    machine is busy: by the kernel's count of the time this thread was ready to run but waited
    for a CPU, against the time it ran (/proc/thread-self/schedstat). The keeper runs at
    SCHED_IDLE, so it waits more the more the replicas serve; its Postgres backend and Redis do
    their part of each record at normal priority, and would otherwise take the replicas' CPU.
    Each batch is paced on its own: a starved refill goes slower, never catches up in a burst."""

    # The smoothed ratio of waiting to running: at or below CALM the full `rate`, at BUSY and
    # above SLOWEST of it, in proportion between (the ratios a half and a full load give the
    # keeper: docs/reliability.md).
    CALM, BUSY = 3.0, 7.0
    SLOWEST = 0.2
    SMOOTHING = 0.2  # weight of the newest batch (one batch's ratio is noisy)

    def __init__(
        self,
        rate: float,
        schedstat: Callable[[], tuple[int, int] | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.top = self.rate = rate
        self.level = 0.0
        self._schedstat = schedstat or _schedstat
        self._sleep = sleep
        self.started = time.monotonic()
        self.sched = self._schedstat()

    def done(self, records: int) -> None:
        """After a batch of `records`: wait out its share of the time, then re-rate."""
        self._sleep(max(0.0, self.started + records / self.rate - time.monotonic()))
        sched = self._schedstat()
        if sched is not None and self.sched is not None and sched[0] > self.sched[0]:
            ratio = (sched[1] - self.sched[1]) / (sched[0] - self.sched[0])
            self.level += self.SMOOTHING * (ratio - self.level)
            share = (self.BUSY - self.level) / (self.BUSY - self.CALM)
            self.rate = self.top * min(1.0, max(self.SLOWEST, share))
        self.sched, self.started = sched, time.monotonic()


def _schedstat() -> tuple[int, int] | None:
    """(ns this thread ran, ns it waited ready to run), or None where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            ran, waited, _slices = f.read().split()
    except (OSError, ValueError):
        return None
    return int(ran), int(waited)


def fill(
    conn: psycopg.Connection,
    client: Client,
    dataset: Dataset,
    pg: Loaded,
    advance: Advance,
    version: int,
    pace: float = 0.0,
) -> Filled:
    """Stream every record of `dataset` from Postgres into `version` of its hashes (a version
    nobody reads yet); switch() makes it live. `pace`: at most that many records a second
    (0: as fast as it goes), for a refill while the replicas serve."""
    _unlink(client, _keys(client, dataset, version))  # never used, unless a counter was lost
    client.hset(FILLING_KEY, dataset.name, version)
    render, slot, record_id = dataset.render, dataset.slot, dataset.record_id
    prefix = key_pattern(dataset, version)[:-1]
    pipe = client.pipeline(transaction=False)
    records = pending = 0
    # A paced refill sends smaller batches: shorter bursts of work between its pauses.
    batch = _PACED_BATCH_RECORDS if pace > 0 else _BATCH_RECORDS
    pacer = Pacer(pace) if pace > 0 else None
    key: str | None = None
    fields: list[str | bytes] = []  # the hash being built: field, value, field, value, ...

    def flush_hash() -> None:
        if fields:
            pipe.execute_command("HSET", key, *fields)

    # Chunked streaming: Postgres computes the next rows while these are rendered and sent,
    # and memory stays flat however big the dataset is.
    for row in conn.cursor().stream(dataset.select_all, size=_FETCH_ROWS):
        row_key, field = slot(record_id(row), version)
        if row_key != key:
            # Rows come ordered by id, so one hash's records arrive together: one HSET each.
            flush_hash()
            if not row_key.startswith(prefix):
                raise RuntimeError(f"{dataset.name}: key {row_key!r} outside {prefix}*")
            key, fields = row_key, []
            if pending >= batch:
                pipe.execute()
                advance(pending)
                if pacer is not None:
                    pacer.done(pending)
                pending = 0
        fields.append(field)
        fields.append(render(row))
        records += 1
        pending += 1
    flush_hash()
    pipe.execute()
    advance(pending)

    if records != pg.rows:
        raise RuntimeError(
            f"{dataset.name}: Postgres returned {records:,} records, dataset_meta says {pg.rows:,}"
        )
    keys = _keys(client, dataset, version)
    return Filled(
        version=version,
        seed=pg.seed,
        rows=pg.rows,
        loaded_at=stamp(pg.loaded_at),
        records=records,
        keys=len(keys),
        bytes_per_record=_bytes_per_record(client, keys),
    )
