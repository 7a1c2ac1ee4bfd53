"""Each replica's own copy of rendered records: the bytes Redis holds, without the round trip.

A published record does not change until a reseed (a new live version) or a single-record
refresh, and on results day every reader asks again and again: the replica keeps the bytes it
served, and warms itself with the whole live version from Redis at start and after each switch.
Bounded in bytes; entries belong to one dataset version and are dropped with it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from api.http_cache import TAG_BYTES, etag
from core.contract import Dataset

# What one entry costs beyond its bytes: the dict slot, the key and the bytes object's header.
ENTRY_OVERHEAD = 120


def _size(entry: bytes) -> int:
    return len(entry) + ENTRY_OVERHEAD


class DatasetCache:
    """One dataset's records of one version, oldest first (evicted first when full). Each entry
    is the record's ETag followed by its bytes: 26 bytes more a record (~30 MB for the default
    dataset), hashed once when copied instead of on every answer."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.records: OrderedDict[Any, bytes] = OrderedDict()
        self.bytes = 0
        # Ids refreshed since this version went live: a warm-up's older copy must not land, and
        # their absence from the copy proves nothing.
        self.refreshed: set[Any] = set()
        # Every record of the version is here (the seeder's count of it, all copied, none
        # evicted): an id the copy lacks is not in the live version.
        self.complete = False
        # The Postgres load (seed, loaded_at) the version was filled from, once known: another
        # version filled from the same load holds the same bytes.
        self.source: tuple[int, str] | None = None


class LocalCache:
    """Rendered records per dataset, keyed by canonical id, for the dataset's live version."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.datasets: dict[str, DatasetCache] = {}

    def get(self, dataset: str, record_id: Any) -> bytes | None:
        """The record's bytes."""
        entry = self.entry(dataset, record_id)
        return None if entry is None else entry[TAG_BYTES:]

    def entry(self, dataset: str, record_id: Any) -> bytes | None:
        """The record's ETag (its first TAG_BYTES) followed by its bytes."""
        cache = self.datasets.get(dataset)
        return None if cache is None else cache.records.get(record_id)

    def knows_absent(self, dataset: str, record_id: Any) -> bool:
        """Whether a record the copy lacks is certainly not in the live version."""
        cache = self.datasets.get(dataset)
        return cache is not None and cache.complete and record_id not in cache.refreshed

    def mark_complete(
        self, dataset: str, version: int, records: int, source: tuple[int, str]
    ) -> bool:
        """After a warm-up: complete when it holds at least the `records` the seeder put in
        this version, filled from the Postgres load `source`. Returns whether it is."""
        cache = self.datasets.get(dataset)
        if cache is None or cache.version != version:
            return False
        cache.source = source
        cache.complete = len(cache.records) >= records
        return cache.complete

    def relabel(self, dataset: str, version: int, source: tuple[int, str]) -> bool:
        """The live version is now `version`, filled from the Postgres load the copy came from
        (Redis refilled after a flush or a restart): the same records, byte for byte, so the
        copy stays, as that version. False (nothing changed) when it came from another load."""
        cache = self.datasets.get(dataset)
        if cache is None or cache.source is None or cache.source != source:
            return False
        cache.version = version
        return True

    def put(self, dataset: str, version: int, record_id: Any, body: bytes) -> None:
        """Keep a record read for `version`; ignored when that is no longer the cached one."""
        cache = self.datasets.get(dataset)
        if cache is None or cache.version != version or self.max_bytes <= 0:
            return
        entry = etag(body) + body
        size = _size(entry)
        old = cache.records.pop(record_id, None)
        if old is not None:
            self._forget(cache, old)
        while self.used + size > self.max_bytes and self._evict_one():
            pass
        if self.used + size > self.max_bytes:
            return
        cache.records[record_id] = entry
        cache.bytes += size
        self.used += size

    def switch(self, dataset: str, version: int) -> None:
        """The live version of a dataset is now `version`: drop what belonged to another (and
        with it the refreshes a warm-up of that version had to skip)."""
        cache = self.datasets.get(dataset)
        if cache is not None and cache.version == version:
            return
        if cache is not None:
            self.used -= cache.bytes
        self.datasets[dataset] = DatasetCache(version)

    def drop(self, dataset: str) -> None:
        """Forget every record of a dataset (the next switch() starts a new copy)."""
        cache = self.datasets.get(dataset)
        if cache is not None:
            self.used -= cache.bytes
            self.datasets[dataset] = DatasetCache(-1)

    def discard(self, dataset: str, record_id: Any) -> None:
        """A record was corrected (or removed) in the stores: serve it from them again."""
        cache = self.datasets.get(dataset)
        if cache is None:
            return
        cache.refreshed.add(record_id)
        old = cache.records.pop(record_id, None)
        if old is not None:
            self._forget(cache, old)

    def records(self, dataset: str) -> int:
        cache = self.datasets.get(dataset)
        return 0 if cache is None else len(cache.records)

    def _forget(self, cache: DatasetCache, entry: bytes) -> None:
        cache.bytes -= _size(entry)
        self.used -= _size(entry)

    def _evict_one(self) -> bool:
        """Drop the oldest entry of the largest dataset; False when nothing is left."""
        cache = max(self.datasets.values(), key=lambda c: c.bytes, default=None)
        if cache is None or not cache.records:
            return False
        _, entry = cache.records.popitem(last=False)
        self._forget(cache, entry)
        cache.complete = False
        return True

    async def warm(self, dataset: Dataset, version: int, redis: Any, batch: int = 10) -> int:
        """Copy one version of a dataset from Redis, hash by hash, until the budget is spent.

        Runs beside the requests on the same event loop: one pipeline of `batch` HGETALLs
        (~1,000 students) at a time, yielding between them, so no request waits behind more
        than a few milliseconds of it. Stops early when the live version moves on."""
        cache = self.datasets.get(dataset.name)
        if cache is None or cache.version != version:
            return 0
        added = 0
        keys: list[bytes] = []
        async for key in redis.scan_iter(match=dataset.version_pattern(version), count=1000):
            keys.append(key)
            if len(keys) >= batch:
                added += await self._warm_batch(dataset, version, redis, keys)
                keys = []
                if self.datasets.get(dataset.name) is not cache or self.used >= self.max_bytes:
                    return added
        if keys:
            added += await self._warm_batch(dataset, version, redis, keys)
        return added

    async def _warm_batch(
        self, dataset: Dataset, version: int, redis: Any, keys: list[bytes]
    ) -> int:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            hashes = await pipe.execute()
        cache = self.datasets.get(dataset.name)
        if cache is None or cache.version != version:
            return 0
        added = 0
        for key, fields in zip(keys, hashes, strict=True):
            for field, body in fields.items():
                record_id = dataset.unslot(key, field)
                if record_id in cache.refreshed or record_id in cache.records:
                    continue
                self.put(dataset.name, version, record_id, body)
                added += 1
        await asyncio.sleep(0)  # let requests in between batches
        return added
