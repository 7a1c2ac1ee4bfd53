"""Redis side: copy each dataset from Postgres into the contract's hashes, and know when not to.

Redis is filled from Postgres, never from the generator, with the contract's select_all, render()
and slot(): the seeder and the API's read-through then write the same bytes under the same field.

`surge:meta` remembers, per dataset, which Postgres load the hashes were filled from (seed, rows,
dataset_meta.loaded_at) and how many hashes that made. A run whose Postgres load matches, and whose
hashes are all still there, leaves Redis alone; anything else (a flush, an eviction, a different
load) clears the dataset's hashes and fills them again.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from datetime import UTC

import orjson
import psycopg
import redis

from api.contract import REDIS_HASH_CONFIG, Dataset
from seeder.postgres import Loaded
from seeder.progress import Advance

MARKER_KEY = "surge:meta"

_FETCH_ROWS = 5_000  # rows per network chunk from Postgres (libpq chunked-rows mode)
_BATCH_RECORDS = 5_000  # records per pipeline round trip to Redis
_SCAN_COUNT = 1_000
_MEMORY_SAMPLE = 1_000  # hashes whose memory is measured


@dataclass(frozen=True, slots=True)
class Filled:
    """What `surge:meta` records for one dataset."""

    seed: int
    rows: int
    loaded_at: str  # dataset_meta.loaded_at of the Postgres load the hashes came from
    records: int
    keys: int
    bytes_per_record: float


def connect(url: str) -> redis.Redis:
    # Generous timeout: a pipeline of several MB takes a moment, unlike the API's lookups.
    return redis.Redis.from_url(url, socket_timeout=60)


def configure(client: redis.Redis) -> None:
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


def key_pattern(dataset: Dataset) -> str:
    # The contract's slot() names every hash "<dataset>:<bucket>"; fill() checks that it does.
    return f"{dataset.name}:*"


def filled(client: redis.Redis, dataset: Dataset) -> Filled | None:
    raw = client.hget(MARKER_KEY, dataset.name)
    try:
        return Filled(**orjson.loads(raw)) if raw else None
    except (orjson.JSONDecodeError, TypeError):  # written by another version: refill
        return None


def in_sync(client: redis.Redis, dataset: Dataset, pg: Loaded) -> Filled | None:
    """The marker of a fill from exactly this Postgres load, if every hash it made is there."""
    marker = filled(client, dataset)
    if (
        marker is None
        or (marker.seed, marker.rows, marker.loaded_at) != (pg.seed, pg.rows, _stamp(pg))
        or _count_keys(client, dataset) != marker.keys
    ):
        return None
    return marker


def _stamp(pg: Loaded) -> str:
    return pg.loaded_at.astimezone(UTC).isoformat()  # the same text whatever the session zone


def _keys(client: redis.Redis, dataset: Dataset) -> list[bytes]:
    return list(client.scan_iter(match=key_pattern(dataset), count=_SCAN_COUNT))


def _count_keys(client: redis.Redis, dataset: Dataset) -> int:
    return len(_keys(client, dataset))


def _bytes_per_record(client: redis.Redis, keys: list[bytes]) -> float:
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


def clear(client: redis.Redis, dataset: Dataset) -> int:
    """Forget the dataset: its marker first (so a crash midway reads as "not filled"), then its
    hashes, in SCAN-sized batches that never block Redis (UNLINK frees memory in the background).
    Other data in the same Redis is left alone."""
    client.hdel(MARKER_KEY, dataset.name)
    keys = _keys(client, dataset)
    return sum(client.unlink(*keys[i : i + _SCAN_COUNT]) for i in range(0, len(keys), _SCAN_COUNT))


def fill(
    conn: psycopg.Connection,
    client: redis.Redis,
    dataset: Dataset,
    pg: Loaded,
    advance: Advance,
) -> Filled:
    """Stream every record of `dataset` from Postgres into Redis; the caller has cleared it."""
    render, slot, record_id = dataset.render, dataset.slot, dataset.record_id
    prefix = key_pattern(dataset)[:-1]
    pipe = client.pipeline(transaction=False)
    records = pending = 0
    key, fields = None, []  # the hash being built: field, value, field, value, ...

    def flush_hash() -> None:
        if fields:
            pipe.execute_command("HSET", key, *fields)

    # Chunked streaming: Postgres computes the next rows while these are rendered and sent,
    # and memory stays flat however big the dataset is.
    for row in conn.cursor().stream(dataset.select_all, size=_FETCH_ROWS):
        row_key, field = slot(record_id(row))
        if row_key != key:
            # Rows come ordered by id, so one hash's records arrive together: one HSET each.
            flush_hash()
            if not row_key.startswith(prefix):
                raise RuntimeError(f"{dataset.name}: key {row_key!r} outside {prefix}*")
            key, fields = row_key, []
            if pending >= _BATCH_RECORDS:
                pipe.execute()
                advance(pending)
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
    keys = _keys(client, dataset)
    marker = Filled(
        seed=pg.seed,
        rows=pg.rows,
        loaded_at=_stamp(pg),
        records=records,
        keys=len(keys),
        bytes_per_record=_bytes_per_record(client, keys),
    )
    client.hset(MARKER_KEY, dataset.name, orjson.dumps(asdict(marker)))
    return marker
