"""Read path: Redis first; on a miss or a Redis fault, Postgres, written back to Redis.

Both stores are bounded in time: a request never waits on Redis longer than
SURGE_REDIS_TIMEOUT, nor on a Postgres connection longer than SURGE_PG_WAIT_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from time import perf_counter
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from api.contract import DATASETS, LIVE_KEY, UNSEEDED_VERSION, Dataset, parse_version
from api.errors import ServiceUnavailable
from api.metrics import Metrics
from api.settings import Settings

log = logging.getLogger("surge.lookup")

# What a failing Redis raises through redis-py: its own errors, socket errors, timeouts.
REDIS_FAULTS = (RedisError, OSError, TimeoutError)
POSTGRES_FAULTS = (psycopg.Error, PoolTimeout, TooManyRequests, OSError)
# A timeout can be this replica's own doing: starved of CPU, its event loop runs late and reads
# a reply that was already in the socket after the deadline. Counting those would open the
# circuit and send every request to Postgres at once, whose bounded pool then answers 503: an
# amplifier (docs/reliability.md, "Faults under load"). So a timeout falls back for its own
# request only; the circuit opens on faults that are certainly Redis's (refused, reset, errors).
REDIS_TIMEOUTS = (RedisTimeoutError, TimeoutError)


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

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.breaker = CircuitBreaker(
            settings.redis_breaker_failures, settings.redis_breaker_cooldown
        )
        self.unknown = NegativeCache(settings.negative_cache_ttl, settings.negative_cache_size)
        # The Redis version each dataset is read from and written back to, as this replica last
        # read surge:live; refreshed in the background (watch_live), never per request.
        self.live: dict[str, int] = {d.name: UNSEEDED_VERSION for d in DATASETS}
        self._watcher: asyncio.Task[None] | None = None
        # The pool is as large as the replica's concurrency cap (Granian --backpressure), so
        # it cannot run dry; no retries: a failed call falls back to Postgres at once.
        self.redis = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_pool_size,
                socket_timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_timeout,
                retry=Retry(NoBackoff(), 0),
            )
        )
        # Postgres serves misses only: a few connections, a short bounded queue, and a quick
        # reconnect cycle (psycopg_pool's defaults: 30 s waits, unbounded queue, 5 min backoff).
        self.postgres = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            timeout=settings.pg_wait_timeout,
            max_waiting=settings.pg_max_waiting,
            reconnect_timeout=2.0,
            check=AsyncConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": settings.pg_connect_timeout,
                "options": f"-c statement_timeout={settings.pg_statement_timeout_ms}",
            },
            open=False,
            name="surge",
        )

    async def open(self) -> None:
        # wait=False: a replica starts even while Postgres is down, and serves from Redis.
        await self.postgres.open(wait=False)
        await self.refresh_live()  # serve the live version from the first request on
        self._watcher = asyncio.create_task(self._watch_live(), name="surge-live-versions")

    async def close(self) -> None:
        try:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher
            await self.postgres.close()
        finally:
            await self.redis.aclose()

    async def refresh_live(self) -> bool:
        """Read surge:live once; on any failure keep the versions already known.

        A dataset absent from surge:live (an empty or flushed Redis) reads version 0, like
        every other replica, so their write-backs land in the same keys."""
        try:
            raw = await self.redis.hgetall(LIVE_KEY)
        except REDIS_FAULTS as exc:
            log.debug("live versions not refreshed: %r", exc)
            return False
        live = {name: parse_version(raw.get(name.encode())) for name in self.live}
        if live != self.live:
            log.info("live dataset versions: %s", live)
            # Records absent from the old version may exist in the new one.
            self.unknown.clear()
            self.live = live
        return True

    async def _watch_live(self) -> None:
        while True:
            await asyncio.sleep(self.settings.live_refresh_interval)
            try:
                await self.refresh_live()
            except Exception:  # a malformed surge:live, say: keep the versions, keep watching
                log.exception("live versions not refreshed")

    async def get(self, dataset: Dataset, record_id: Any) -> bytes | None:
        """The record's JSON bytes, or None when no such record exists.

        Raises ServiceUnavailable when Redis cannot answer and Postgres cannot either.
        """
        # One version for the whole lookup, write-back included: never a mix of two.
        key, field = dataset.slot(record_id, self.live[dataset.name])
        metrics, breaker = self.metrics, self.breaker
        outcome = metrics.outcomes[dataset.name]
        redis_answered = False
        if breaker.allows():
            started = perf_counter()
            try:
                body = await self.redis.hget(key, field)
            except REDIS_FAULTS as exc:
                self._redis_failed(exc)
                log.warning("redis read failed, falling back to postgres: %r", exc)
            else:
                redis_answered = True
                metrics.redis_hget.observe(perf_counter() - started)
                breaker.record_success()
                if body is not None:
                    outcome.redis_hit.inc()
                    return body  # type: ignore[no-any-return]

        unknown_key = (dataset.name, record_id)
        if unknown_key in self.unknown:
            outcome.negative_cache_hit.inc()
            return None
        try:
            body = await self.from_postgres(dataset, record_id)
        except ServiceUnavailable:
            outcome.unavailable.inc()
            raise
        if body is None:
            outcome.not_found.inc()
            self.unknown.add(unknown_key)
            return None
        outcome.fallback_hit.inc()
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
        key, field = dataset.slot(record_id, version)
        try:
            if body is None:
                await self.redis.hdel(key, field)
            else:
                await self.redis.hset(key, field, body)
        except REDIS_FAULTS as exc:
            log.warning("redis refresh failed: %r", exc)
            raise ServiceUnavailable(
                detail="The cache is unavailable; retry shortly.",
                headers={"Retry-After": str(self.settings.retry_after)},
            ) from None
        # Only this replica's: the others forget within SURGE_NEGATIVE_CACHE_TTL.
        self.unknown.discard((dataset.name, record_id))
        return version, body is not None

    async def from_postgres(self, dataset: Dataset, record_id: Any) -> bytes | None:
        started = perf_counter()
        try:
            async with self.postgres.connection() as conn:
                cursor = await conn.execute(dataset.select_one, (record_id,))
                row = await cursor.fetchone()
        except POSTGRES_FAULTS as exc:
            self.metrics.postgres_errors.inc()
            log.warning("postgres read failed: %r", exc)
            raise ServiceUnavailable(
                detail="The record store is unavailable; retry shortly.",
                headers={"Retry-After": str(self.settings.retry_after)},
            ) from None
        self.metrics.postgres_select.observe(perf_counter() - started)
        return None if row is None else dataset.render(row)

    async def _write_back(self, key: str, field: str, body: bytes) -> None:
        if not self.breaker.allows():
            return
        started = perf_counter()
        try:
            await self.redis.hset(key, field, body)
        except REDIS_FAULTS as exc:
            self._redis_failed(exc)
            log.warning("redis write-back failed: %r", exc)
        else:
            self.metrics.redis_hset.observe(perf_counter() - started)
            self.breaker.record_success()

    def _redis_failed(self, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        if not isinstance(exc, REDIS_TIMEOUTS):
            self.breaker.record_failure()

    async def readiness(self) -> dict[str, str]:
        """Per-component status for /ready: each probe bounded like a lookup."""
        status = {"redis": "up", "postgres": "up"}
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
