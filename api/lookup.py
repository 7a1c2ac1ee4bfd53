"""Read path: the replica's own copy first, then Redis; on a miss or a Redis fault, Postgres
(its standby when there is one), written back to Redis.

Both stores are bounded in time: a request never waits on Redis longer than
SURGE_REDIS_TIMEOUT, nor on a Postgres connection longer than SURGE_PG_WAIT_TIMEOUT (twice at
most with a standby: the standby's pool, then the primary's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any, TypeVar, cast

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.observability.attributes import DB_CLIENT_CONNECTION_STATE, ConnectionState

from api.errors import ServiceUnavailable
from api.local_cache import LocalCache
from api.metrics import CopyStats, LookupStats, Metrics
from core.contract import (
    DATASETS,
    LIVE_KEY,
    MARKER_KEY,
    PRIMARY_WAL_POSITION,
    REFRESHED_KEEP,
    REFRESHED_KEY,
    STANDBY_REPLAYED,
    UNSEEDED_VERSION,
    Dataset,
    parse_version,
)
from core.settings import ApiSettings, StoreSettings

log = logging.getLogger("surge.lookup")
T = TypeVar("T")
# One Redis, or a Redis Cluster (SURGE_REDIS_MODE=cluster): the read path's calls are the same.
RedisClient = aioredis.Redis | aioredis.RedisCluster

# What a failing Redis raises through redis-py: its own errors, socket errors, timeouts, and
# uvloop's RuntimeError ("unable to perform operation on <TCPTransport closed=True>"): a pooled
# connection whose socket died while idle (reset, or TCP_USER_TIMEOUT/keepalive on a silent
# network) still looks connected to redis-py, and its next write raises that (then redis-py
# drops it). Uncaught, it was a 500 (docs/reliability.md, "Across a real network").
REDIS_FAULTS = (RedisError, OSError, TimeoutError, RuntimeError)
POSTGRES_FAULTS = (psycopg.Error, PoolTimeout, TooManyRequests, OSError)
# A standby call also fails when it outlasts its deadline (Lookup._within).
STANDBY_FAULTS = (*POSTGRES_FAULTS, TimeoutError)
# A timeout can be this replica's own doing: starved of CPU, its event loop runs late and reads
# a reply that was already in the socket after the deadline. Counting those would open the
# circuit and send every request to Postgres at once, whose bounded pool then answers 503: an
# amplifier (docs/reliability.md, "Faults under load"). So a timeout falls back for its own
# request only; the circuit opens on faults that are certainly Redis's (refused, reset, errors).
REDIS_TIMEOUTS = (RedisTimeoutError, TimeoutError)
# A pooled connection the kernel closed during a partition looks open until used: a call that
# meets one (reset, closed; never a timeout) goes once more on a new connection, instead of
# falling back to a Postgres still reconnecting (docs/reliability.md, "Across a real network").
DEAD_CONNECTION = (RedisConnectionError, RuntimeError)
DEAD_CONNECTION_RETRIES = 1
# A Redis that timed out is asked again, for up to this long, when Postgres cannot answer
# either: a timeout on saturated cores is usually ours, and a late record beats a 503.
REDIS_SECOND_CHANCE_S = 0.5
# Seconds before a warm-up of the replica's copy that Redis interrupted goes again, and how long
# one of its pipelines may take.
WARM_RETRY_S = 1.0
# Seconds a replica's shutdown waits for its store clients (inside Granian's kill timeout), and
# for each Postgres pool's workers within it.
CLOSE_TIMEOUT_S = 8.0
POOL_CLOSE_TIMEOUT_S = 2.0
WARM_TIMEOUT_S = 10.0
# Idle Postgres connections are checked every this many live-version reads (2 s by default).
POOL_CHECK_ROUNDS = 4
# A connection whose peer went silent (a partition: no reset, packets lost) otherwise waits out
# TCP's retransmission backoff, seconds after the link returns, and its idle peers ~2 h of
# keepalive. Sent data unacknowledged for TCP_USER_TIMEOUT_MS, or an idle connection whose
# probes go unanswered (1 s idle, then 2 probes 1 s apart), fails, and the pool opens another.
# Set once per connection: no cost per request (docs/reliability.md, "Across a real network").
TCP_USER_TIMEOUT_MS = 2000
TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S, TCP_KEEPALIVE_COUNT = 1, 1, 2
REDIS_SOCKET_OPTIONS: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        socket.TCP_KEEPIDLE: TCP_KEEPALIVE_IDLE_S,
        socket.TCP_KEEPINTVL: TCP_KEEPALIVE_INTERVAL_S,
        socket.TCP_KEEPCNT: TCP_KEEPALIVE_COUNT,
        socket.TCP_USER_TIMEOUT: TCP_USER_TIMEOUT_MS,
    },
}
POSTGRES_SOCKET_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": TCP_KEEPALIVE_IDLE_S,
    "keepalives_interval": TCP_KEEPALIVE_INTERVAL_S,
    "keepalives_count": TCP_KEEPALIVE_COUNT,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}
# Seconds between probes of a standby the fallback reads have left (it failed, or it lags the
# primary), and between questions to a standby an admin refresh waits for.
STANDBY_PROBE_S = 0.5
STANDBY_POLL_S = 0.05
# The WAL's first position, which every standby has replayed: what it is compared with when
# the primary cannot say where it is.
_WAL_START = "0/0"


class CircuitBreaker:
    """Stops calling Redis after repeated failures; after a cooldown one request probes it.

    Closed: every request may call. Open (threshold consecutive failures): none may, until
    the cooldown ends; then the first caller probes, and a success closes the circuit.
    Timeouts are not failures here (REDIS_TIMEOUTS): Lookup never records them.
    """

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold

    def allows(self) -> bool:
        if self.failures < self.threshold:
            return True
        now = time.monotonic()
        if now < self.open_until:
            return False
        self.open_until = now + self.cooldown  # this caller probes; the rest wait another round
        return True

    def record_success(self) -> None:
        self.failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown


class NegativeCache:
    """Ids known to be absent, for a while: a flood of one unknown id reaches Postgres once.

    Entries sit in the dict in the order they expire (one TTL for all, re-added at the end), so
    each add first drops the expired ones at the front: the cache holds about TTL x the rate of
    unknown ids, not `size` entries of dead ones (the soak in `make bench` saw replica memory
    climb ~1 MB a minute under a steady 6% of unknown ids before this). `size` still bounds it:
    when full, the oldest go first.
    """

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        # Not a dict: dropping its first entries over and over leaves dead slots that every
        # next(iter()) has to walk past until the dict is rebuilt.
        self._expiry: OrderedDict[tuple[str, Any], float] = OrderedDict()

    def __contains__(self, key: tuple[str, Any]) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry > time.monotonic():
            return True
        del self._expiry[key]
        return False

    def add(self, key: tuple[str, Any]) -> None:
        now = time.monotonic()
        expiry = self._expiry
        expiry.pop(key, None)
        while expiry:
            _, expires = next(iter(expiry.items()))  # O(1): an OrderedDict is a linked list
            if expires > now and len(expiry) < self.size:
                break
            expiry.popitem(last=False)
        expiry[key] = now + self.ttl

    def discard(self, key: tuple[str, Any]) -> None:
        self._expiry.pop(key, None)

    def clear(self) -> None:
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)


class Lookup:
    """Owns the Redis and Postgres pools of one replica and answers record lookups."""

    def __init__(self, stores: StoreSettings, api: ApiSettings, metrics: Metrics) -> None:
        self.stores = stores
        self.api = api
        self.metrics = metrics
        self.breaker = CircuitBreaker(stores.redis_breaker_failures, stores.redis_breaker_cooldown)
        self.unknown = NegativeCache(api.negative_cache_ttl, api.negative_cache_size)
        # The Redis version each dataset is read from and written back to, as this replica last
        # read {surge}:live; refreshed in the background (watch_live), never per request.
        self.live: dict[str, int] = {d.name: UNSEEDED_VERSION for d in DATASETS}
        self.local = LocalCache(api.local_cache_mb * 2**20)
        for name, version in self.live.items():
            self.local.switch(name, version)
        # The newest single-record refresh this replica has applied ({surge}:refreshed stream id).
        self._refreshed_seen: bytes | str = b"0-0"
        self._watcher: asyncio.Task[None] | None = None
        self._pool_check: asyncio.Task[None] | None = None
        self._warmers: dict[str, asyncio.Task[int]] = {}
        # As many connections as the replica's concurrency cap (Granian --backpressure; per node
        # of a cluster), so the pool cannot run dry; no retries: a failed call falls back to
        # Postgres at once (a cluster still follows MOVED and ASK: they are not failures).
        self.redis = _redis_client(stores, stores.redis_pool_size, stores.redis_timeout)
        # The warm-ups' own connections, one per dataset as they run side by side (a shared one
        # made the second fail at once and start over): their pipelines carry ~1,000 records,
        # which a busy replica may take longer than SURGE_REDIS_TIMEOUT to read.
        self.warm_redis = _redis_client(stores, len(DATASETS), WARM_TIMEOUT_S)
        # The primary: misses when there is no standby (or it fails), admin routes, refreshes.
        self.postgres = self._pool(stores.database_url, "surge", checked=True)
        # Misses go to the standby while it answers and keeps up. Its connections are not
        # checked when taken: a dead standby then fails the query itself at once and the
        # request reads the primary, where a check made psycopg_pool retry with a 1 s backoff
        # and the lookup wait out SURGE_PG_WAIT_TIMEOUT (0.5 s) first.
        self.standby = (
            self._pool(stores.standby_url, "surge-standby", checked=False)
            if stores.standby_url
            else None
        )
        # Whether misses read the standby now: off after any failure there (the next requests go
        # straight to the primary), on again once a probe finds it answering and caught up. Off
        # at start: the first probe, right away, decides.
        self.reads_on_standby = False
        self._standby_watcher: asyncio.Task[None] | None = None
        self._standby_calls: set[asyncio.Task[Any]] = set()  # see _within

    def _pool(self, url: str, name: str, *, checked: bool) -> AsyncConnectionPool:
        # Postgres serves misses only: a few connections, a short bounded queue, and a quick
        # reconnect cycle (psycopg_pool's defaults: 30 s waits, unbounded queue, 5 min backoff).
        api = self.api
        return AsyncConnectionPool(
            url,
            min_size=api.pg_pool_min,
            max_size=api.pg_pool_max,
            timeout=api.pg_wait_timeout,
            max_waiting=api.pg_max_waiting,
            reconnect_timeout=2.0,
            check=AsyncConnectionPool.check_connection if checked else None,
            kwargs={
                "autocommit": True,
                "connect_timeout": api.pg_connect_timeout,
                "options": f"-c statement_timeout={api.pg_statement_timeout_ms}",
                **POSTGRES_SOCKET_OPTIONS,
            },
            open=False,
            name=name,
        )

    async def open(self) -> None:
        # wait=False: a replica starts even while Postgres is down, and serves from Redis.
        await self.postgres.open(wait=False)
        if self.standby is not None:
            await self.standby.open(wait=False)
            self._standby_watcher = asyncio.create_task(self._watch_standby(), name="surge-standby")
        with contextlib.suppress(*REDIS_FAULTS):  # refreshes before now are in what we read
            newest = await self.redis.xrevrange(REFRESHED_KEY, count=1)
            self._refreshed_seen = (newest[0][0] if newest else None) or b"0-0"
        await self.refresh_live()  # serve the live version from the first request on
        for dataset in DATASETS:
            if dataset.name not in self._warmers:  # refresh_live started those it switched
                self._warm(dataset)
        self._watcher = asyncio.create_task(self._watch_live(), name="surge-live-versions")

    async def close(self) -> None:
        # Bounded: a store that vanished mid-call must not hold the replica's shutdown forever
        # (a pool closing while a cancelled check still held its connections once did).
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._close_tasks_and_pools()
        except TimeoutError:
            log.warning(
                "closing the stores took over %.0f s: left to the process exit", CLOSE_TIMEOUT_S
            )
        finally:
            with contextlib.suppress(TimeoutError, *REDIS_FAULTS):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.redis.aclose()
                    await self.warm_redis.aclose()

    async def _close_tasks_and_pools(self) -> None:
        for task in [self._watcher, self._standby_watcher, *self._warmers.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *REDIS_FAULTS):
                    await task
        if self._pool_check is not None:
            # Not awaited: psycopg meets a cancelled query by waiting (up to 10 s) for the
            # server to cancel it, which a silent one never does; the pool's close ends it.
            self._pool_check.cancel()
        await self.postgres.close(timeout=POOL_CLOSE_TIMEOUT_S)
        if self.standby is not None:
            await self.standby.close(timeout=POOL_CLOSE_TIMEOUT_S)

    async def refresh_live(self) -> bool:
        """Read {surge}:live and the refreshes since the last read, in one round trip; on any
        failure keep the versions already known.

        A dataset absent from {surge}:live (an empty or flushed Redis) reads version 0, like
        every other replica, so their write-backs land in the same keys."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(LIVE_KEY)
                pipe.xread({REFRESHED_KEY: self._refreshed_seen}, count=REFRESHED_KEEP)
                raw, refreshed = await pipe.execute()
        except REDIS_FAULTS as exc:
            log.debug("live versions not refreshed: %r", exc)
            return False
        for _stream, entries in refreshed or ():
            for entry_id, fields in entries:
                self._forget_refreshed(fields)
                self._refreshed_seen = entry_id
        live = {name: parse_version(raw.get(name.encode())) for name in self.live}
        if live != self.live:
            log.info("live dataset versions: %s", live)
            # Records absent from the old version may exist in the new one.
            self.unknown.clear()
            previous, self.live = self.live, live
            for dataset in DATASETS:
                version = live[dataset.name]
                # Back to "unseeded" means Redis restarted empty or was flushed: the records
                # are as they were (only a seed changes them, and it names its new version
                # here), so the copy stays while Redis refills.
                if version == UNSEEDED_VERSION:
                    continue
                # After a flush, version numbers start again: the same number may now hold
                # another load's records, so the copy is checked against the marker too.
                refilled = previous[dataset.name] == UNSEEDED_VERSION
                if refilled or self.local.datasets[dataset.name].version != version:
                    await self._copy_version(dataset, version)
        return True

    async def _copy_version(self, dataset: Dataset, version: int) -> None:
        """A new live version: keep the copy when Redis was only refilled from the Postgres
        load it came from (dropping it would send every lookup to Redis at 4x the cost while
        it warms again), else warm a copy of the new version."""
        try:
            marker = await self.redis.hget(MARKER_KEY, dataset.name)
        except REDIS_FAULTS:
            marker = None
        seeded = orjson.loads(marker) if marker else {}
        if seeded.get("version") == version and self.local.relabel(
            dataset.name, version, _source(seeded)
        ):
            log.info("local copy of %s kept as v%d (the same Postgres load)", dataset.name, version)
            if not self.local.datasets[dataset.name].complete:
                # Warmed while Redis lacked records: copy the rest (a warm-up skips what the
                # copy holds).
                self._warm(dataset)
            return
        self.local.drop(dataset.name)  # another load's records: none of them may stay
        self._warm(dataset)

    def _forget_refreshed(self, fields: dict[bytes, bytes]) -> None:
        """Another replica (or this one) refreshed a record: drop this replica's copy."""
        for dataset in DATASETS:
            if fields.get(b"dataset") == dataset.name.encode():
                record_id = dataset.parse_id(fields.get(b"id", b"").decode())
                if record_id is not None:
                    self.local.discard(dataset.name, record_id)
                    self.unknown.discard((dataset.name, record_id))

    def _warm(self, dataset: Dataset) -> None:
        """Start copying the live version of a dataset into this replica, replacing a copy of
        another version (and any warm-up of it still running)."""
        version = self.live[dataset.name]
        self.local.switch(dataset.name, version)
        previous = self._warmers.pop(dataset.name, None)
        if previous is not None:
            previous.cancel()
        if self.local.max_bytes > 0:
            task = asyncio.create_task(self._warm_version(dataset, version))
            self._warmers[dataset.name] = task

    async def _warm_version(self, dataset: Dataset, version: int) -> int:
        started, added = perf_counter(), 0
        while True:
            try:
                added += await self.local.warm(dataset, version, self.warm_redis)
                marker = await self.warm_redis.hget(MARKER_KEY, dataset.name)
                break
            except REDIS_FAULTS as exc:
                # Redis down or restarting: requests fill the copy meanwhile; go again later
                # (what is already held is skipped).
                log.warning("local copy of %s v%d interrupted: %r", dataset.name, version, exc)
                await asyncio.sleep(WARM_RETRY_S)
        seeded = orjson.loads(marker) if marker else {}
        complete = seeded.get("version") == version and self.local.mark_complete(
            dataset.name, version, int(seeded.get("records", 0)), _source(seeded)
        )
        log.info(
            "local copy of %s v%d: %d records in %.1f s%s",
            dataset.name, version, added, perf_counter() - started,
            " (the whole version: unknown ids answered from it)" if complete else "",
        )  # fmt: skip
        return added

    async def _watch_live(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.api.live_refresh_interval)
            rounds += 1
            try:
                await self.refresh_live()
            except Exception:  # a malformed {surge}:live, say: keep the versions, keep watching
                log.exception("live versions not refreshed")
            idle_check = self._pool_check
            if rounds % POOL_CHECK_ROUNDS == 0 and (idle_check is None or idle_check.done()):
                # Beside the watcher, not in it: a check waits as long as Postgres is silent
                # (partitioned), and the live versions must still be followed meanwhile.
                self._pool_check = asyncio.create_task(self._check_idle_postgres())

    async def _check_idle_postgres(self) -> None:
        # A replica nginx rarely sends work to (a spill-over backup) would otherwise keep
        # connections Postgres dropped until a miss tripped over them, and answer 503.
        with contextlib.suppress(*POSTGRES_FAULTS):
            await self.postgres.check()

    async def get(self, dataset: Dataset, record_id: Any) -> bytes | None:
        """The record's JSON bytes, or None when no such record exists.

        Raises ServiceUnavailable when Redis cannot answer and Postgres cannot either.
        """
        outcome = self.metrics.outcomes[dataset.name]
        body = self.local.get(dataset.name, record_id)
        if body is not None:
            outcome.local_hit.inc()
            return body
        if self.local.knows_absent(dataset.name, record_id):
            outcome.not_in_live_version.inc()  # a bot walking the id space never reaches Postgres
            return None
        # One version for the whole lookup, write-back included: never a mix of two.
        version = self.live[dataset.name]
        key, field = dataset.slot(record_id, version)
        metrics, breaker = self.metrics, self.breaker
        redis_answered = redis_timed_out = False
        if breaker.allows():
            started = perf_counter()
            try:
                body = cast("bytes | None", await self.redis.hget(key, field))
            except REDIS_FAULTS as exc:
                self._redis_failed(exc)
                redis_timed_out = isinstance(exc, REDIS_TIMEOUTS)
                log.warning("redis read failed, falling back to postgres: %r", exc)
            else:
                redis_answered = True
                metrics.redis_hget.observe(perf_counter() - started)
                breaker.record_success()
                if body is not None:
                    outcome.redis_hit.inc()
                    self.local.put(dataset.name, version, record_id, body)
                    return body

        unknown_key = (dataset.name, record_id)
        if unknown_key in self.unknown:
            outcome.negative_cache_hit.inc()
            return None
        try:
            body = await self.fallback_read(dataset, record_id)
        except ServiceUnavailable:
            body = await self._redis_again(key, field) if redis_timed_out else None
            if body is None:
                outcome.unavailable.inc()
                raise
            outcome.redis_hit.inc()
            self.local.put(dataset.name, version, record_id, body)
            return body
        if body is None:
            outcome.not_found.inc()
            self.unknown.add(unknown_key)
            return None
        outcome.fallback_hit.inc()
        self.local.put(dataset.name, version, record_id, body)
        if redis_answered:
            # Only after a plain miss: a Redis that just failed or timed out would make the
            # write-back wait out another timeout (Redis slow: timeout + Postgres + timeout).
            await self._write_back(key, field, body)
        return body

    async def refresh_record(self, dataset: Dataset, record_id: Any) -> tuple[int, bool]:
        """Copy one record from Postgres into the live Redis version, after a correction there.

        Returns (version written, whether Postgres has the record); a record Postgres no longer
        has is removed from Redis. Raises ServiceUnavailable when a store cannot answer."""
        await self.refresh_live()  # an admin call can afford the round trip: the newest version
        version = self.live[dataset.name]
        body = await self.from_postgres(dataset, record_id)
        if self.standby is not None:
            await self._standby_has_replayed_primary()
        key, field = dataset.slot(record_id, version)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if body is None:
                    pipe.hdel(key, field)
                else:
                    pipe.hset(key, field, body)
                # Every replica drops its own copy when it next reads the live versions.
                pipe.xadd(
                    REFRESHED_KEY,
                    {"dataset": dataset.name, "id": str(record_id)},
                    maxlen=REFRESHED_KEEP,
                    approximate=True,
                )
                await pipe.execute()
        except REDIS_FAULTS as exc:
            log.warning("redis refresh failed: %r", exc)
            raise ServiceUnavailable(
                detail="The cache is unavailable; retry shortly.",
                headers={"Retry-After": str(self.api.retry_after)},
            ) from None
        self.unknown.discard((dataset.name, record_id))
        self.local.discard(dataset.name, record_id)
        return version, body is not None

    async def fallback_read(self, dataset: Dataset, record_id: Any) -> bytes | None:
        """A miss's read: the standby while it serves, else (or when it fails now) the primary."""
        if self.standby is not None and self.reads_on_standby:
            try:
                return await self._within(
                    _select(self.standby, dataset, record_id, self.metrics.standby_select)
                )
            except STANDBY_FAULTS as exc:
                # This request goes on to the primary, the next ones straight there.
                self.reads_on_standby = False
                self.metrics.standby_errors.inc()
                log.warning("standby read failed, reading the primary until it is back: %r", exc)
        return await self.from_postgres(dataset, record_id)

    async def from_postgres(self, dataset: Dataset, record_id: Any) -> bytes | None:
        """The record as the primary has it."""
        try:
            return await _select(self.postgres, dataset, record_id, self.metrics.postgres_select)
        except POSTGRES_FAULTS as exc:
            self.metrics.postgres_errors.inc()
            log.warning("postgres read failed: %r", exc)
            raise ServiceUnavailable(
                detail="The record store is unavailable; retry shortly.",
                headers={"Retry-After": str(self.api.retry_after)},
            ) from None

    async def _primary_position(self) -> str | None:
        """Where the primary's WAL is written up to now; None when it cannot say."""
        try:
            async with self.postgres.connection() as conn:
                row = await (await conn.execute(PRIMARY_WAL_POSITION)).fetchone()
        except POSTGRES_FAULTS:
            return None
        return None if row is None else str(row[0])

    async def _standby_replayed(self, position: str) -> bool:
        """Whether the standby has replayed the primary's WAL up to `position`; raises
        STANDBY_FAULTS when it does not answer in time."""
        assert self.standby is not None
        standby = self.standby

        async def ask() -> bool:
            async with standby.connection() as conn:
                row = await (await conn.execute(STANDBY_REPLAYED, (position,))).fetchone()
            return bool(row and row[1])

        return await self._within(ask())

    async def _within(self, work: Coroutine[Any, Any, T]) -> T:
        """What a call to the standby returns, or TimeoutError after SURGE_PG_WAIT_TIMEOUT (its
        wait for a connection included), the call then left to end on its own.

        Not cancelled: psycopg meets a cancelled query by asking the server to cancel it and
        waiting up to 10 s, which a hung standby (stopped, or its host gone silent) never
        answers; a miss then outlived its deadline by seconds. Left alone, the
        call ends when the standby answers or its connection breaks, and gives its connection
        back to the pool."""
        call = asyncio.ensure_future(work)
        self._standby_calls.add(call)  # a strong reference, so it is not collected mid-way
        call.add_done_callback(_forget_call(self._standby_calls))
        return await asyncio.wait_for(asyncio.shield(call), self.api.pg_wait_timeout)

    async def _watch_standby(self) -> None:
        """Send misses back to the standby once it answers and holds all the primary had written
        when asked, so a standby that restarts behind never serves a record as it was."""
        assert self.standby is not None
        while True:
            if not self.reads_on_standby:
                try:
                    # Drops the connections a restart broke (else one failed probe each).
                    await self._within(self.standby.check())
                    # A primary that cannot say writes nothing newer: answering is enough.
                    position = await self._primary_position() or _WAL_START
                    if await self._standby_replayed(position):
                        self.reads_on_standby = True
                        log.info("misses read the standby")
                except STANDBY_FAULTS as exc:
                    log.debug("standby not back yet: %r", exc)
                except Exception:  # an answer of the wrong shape, say: keep probing
                    log.exception("standby probe failed")
            await asyncio.sleep(STANDBY_PROBE_S)

    async def _standby_has_replayed_primary(self) -> None:
        """Before a refresh changes Redis: wait until the standby has replayed what was just
        read from the primary, so no replica's miss reads the record there as it was (and
        writes that back). A standby that does not answer is passed over: every replica waits
        for it to catch up before reading it again. Raises ServiceUnavailable when it answers
        but stays behind for SURGE_STANDBY_REPLAY_TIMEOUT."""
        position = await self._primary_position()
        if position is None:
            return  # the primary went away since the read: nothing to compare with
        deadline = time.monotonic() + self.stores.standby_replay_timeout
        while True:
            try:
                if await self._standby_replayed(position):
                    return
            except STANDBY_FAULTS:
                self.reads_on_standby = False
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    detail="The standby has not replayed the record yet; retry shortly.",
                    headers={"Retry-After": str(self.api.retry_after)},
                )
            await asyncio.sleep(STANDBY_POLL_S)

    async def _write_back(self, key: str, field: str, body: bytes) -> None:
        if not self.breaker.allows():
            return
        started = perf_counter()
        try:
            await self.redis.hset(key, field, body)
        except OutOfMemoryError:
            # Full (maxmemory, noeviction): Redis works, it only keeps what the seeder put there.
            self.metrics.redis_refused_write.inc()
        except REDIS_FAULTS as exc:
            self._redis_failed(exc)
            log.warning("redis write-back failed: %r", exc)
        else:
            self.metrics.redis_hset.observe(perf_counter() - started)
            self.breaker.record_success()

    async def _redis_again(self, key: str, field: str) -> bytes | None:
        """The record from a Redis that timed out once, asked again until REDIS_SECOND_CHANCE_S
        has passed (each call still bounded by the Redis timeout); None if it never answers."""
        deadline = perf_counter() + REDIS_SECOND_CHANCE_S
        while perf_counter() < deadline and self.breaker.allows():
            try:
                return cast("bytes | None", await self.redis.hget(key, field))
            except REDIS_FAULTS as exc:
                self._redis_failed(exc)
                if not isinstance(exc, REDIS_TIMEOUTS):  # refused, reset: not slow, gone
                    return None
        return None

    def _redis_failed(self, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        if not isinstance(exc, REDIS_TIMEOUTS):
            self.breaker.record_failure()

    def stats(self) -> LookupStats:
        """This read path's state for the metrics, from its clients' public counters."""
        redis_in_use, redis_idle, redis_max = _redis_connections(self.redis)
        pg = self.postgres.get_stats()
        pg_size, pg_idle = pg.get("pool_size", 0), pg.get("pool_available", 0)
        local = self.local
        return LookupStats(
            redis_in_use=redis_in_use,
            redis_idle=redis_idle,
            redis_max=redis_max,
            postgres_in_use=pg_size - pg_idle,
            postgres_idle=pg_idle,
            postgres_max=self.postgres.max_size,
            postgres_waiting=pg.get("requests_waiting", 0),
            standby_reads=None if self.standby is None else self.reads_on_standby,
            circuit_open=self.breaker.is_open,
            negative_entries=len(self.unknown),
            copies=tuple(
                CopyStats(name, cache.version, len(cache.records), cache.complete)
                for name, cache in sorted(local.datasets.items())
            ),
            copy_bytes_used=local.used,
            copy_bytes_budget=local.max_bytes,
        )

    async def readiness(self) -> dict[str, str]:
        """Per-component status for /ready: each probe bounded like a lookup; `copy` is this
        replica's own copy of the records (complete: it answers every lookup by itself)."""
        copies = [self.local.datasets.get(d.name) for d in DATASETS]
        if self.local.max_bytes <= 0:
            copy = "off"
        elif all(c is not None and c.complete for c in copies):
            copy = "complete"
        else:
            copy = "partial"
        status = {"redis": "up", "postgres": "up", "copy": copy}
        try:
            await self.redis.ping()
        except REDIS_FAULTS:
            status["redis"] = "down"
        try:
            async with self.postgres.connection() as conn:
                await conn.execute("SELECT 1")
        except POSTGRES_FAULTS:
            status["postgres"] = "down"
        return status


async def _select(
    pool: AsyncConnectionPool, dataset: Dataset, record_id: Any, timer: Any
) -> bytes | None:
    """One record from one server; `timer` observes the call's seconds (a metrics child)."""
    started = perf_counter()
    async with pool.connection() as conn:
        cursor = await conn.execute(dataset.select_one, (record_id,))
        row = await cursor.fetchone()
    timer.observe(perf_counter() - started)
    return None if row is None else dataset.render(row)


def _redis_client(stores: StoreSettings, connections: int, timeout: float) -> RedisClient:
    """A client of the Redis (or Redis Cluster) the settings name: a call that found its pooled
    connection dead goes once more on a fresh one (one Redis only); nothing else is retried."""
    options: dict[str, Any] = {
        "max_connections": connections,
        "socket_timeout": timeout,
        "socket_connect_timeout": stores.redis_timeout,
        **REDIS_SOCKET_OPTIONS,
    }
    if stores.cluster:
        return aioredis.RedisCluster.from_url(
            stores.redis_url, retry=Retry(NoBackoff(), 0), **options
        )
    # Typed for RedisError subclasses only; uvloop's RuntimeError is caught the same way.
    dead = cast("tuple[type[RedisError], ...]", DEAD_CONNECTION)
    retry = Retry(NoBackoff(), DEAD_CONNECTION_RETRIES, supported_errors=dead)
    return aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(stores.redis_url, retry=retry, **options)
    )


def _redis_connections(client: RedisClient) -> tuple[int | None, int | None, int]:
    """(in use, idle, most allowed) connections of a Redis client. A cluster client's nodes
    count theirs in private fields only: its in use and idle are unknown (None), its most
    allowed summed over the nodes it knows."""
    if isinstance(client, aioredis.RedisCluster):
        return None, None, sum(node.max_connections for node in client.get_nodes())
    pool = client.connection_pool
    counts = {
        attributes.get(DB_CLIENT_CONNECTION_STATE): count
        for count, attributes in pool.get_connection_count()
    }
    used = counts.get(ConnectionState.USED.value, 0)
    return used, counts.get(ConnectionState.IDLE.value, 0), pool.max_connections


def _forget_call(calls: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def forget(call: asyncio.Task[Any]) -> None:
        calls.discard(call)
        if not call.cancelled():
            call.exception()  # seen: an abandoned call's failure is not logged as unretrieved

    return forget


def _source(marker: dict[str, Any]) -> tuple[int, str]:
    """The Postgres load a version was filled from, as its `{surge}:meta` marker names it."""
    return int(marker.get("seed", -1)), str(marker.get("loaded_at", ""))
