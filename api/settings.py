"""Every knob of surge, read from the environment once. Defaults work on a developer's machine."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

_PREFIX = "SURGE_"
REDIS_MODES = ("single", "cluster")
DEFAULT_PASSWORD = "surge"  # local development only: production refuses it


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment variables are the field names upper-cased with the SURGE_ prefix."""

    environment: str = "development"
    """`production` refuses to start with the local default credentials below."""
    database_url: str = "postgresql://surge:surge@127.0.0.1:5432/surge"
    """Postgres, the source of truth (libpq URL)."""
    database_read_url: str = ""
    """A streaming standby of SURGE_DATABASE_URL that the replicas' fallback reads go to (libpq
    URL); empty (or the same URL): they read SURGE_DATABASE_URL. The seeder and the admin
    refresh always use SURGE_DATABASE_URL, and the seeder switches Redis to a new version only
    once the standby has replayed its load."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis, the read cache the seeder fills; in cluster mode any one node of the cluster (the
    clients learn the others from it)."""
    redis_mode: str = "single"
    """`single`: SURGE_REDIS_URL is one Redis. `cluster`: it is a node of a Redis Cluster, and
    every client (API, seeder, keeper, exporter) talks to the cluster."""
    redis_nodes: int = 3
    """Masters of the Redis Cluster `make up` starts in cluster mode, each with one replica, on
    consecutive ports from SURGE_REDIS_PORT (at least 3, as redis-cli --cluster create asks)."""

    students: int = 664_824
    """How many students the seeder makes (ids start at 10,000)."""
    bookings: int = 500_000
    """How many bookings the seeder makes."""
    seed: int = 2026
    """Seed of the generator: the same seed gives the same data."""

    redis_timeout: float = 0.1
    """Seconds one Redis call may take before the request falls back to Postgres."""
    redis_pool_size: int = 256
    """Redis connections per replica; matches the replica's concurrency cap (backpressure)."""
    redis_breaker_failures: int = 3
    """Consecutive Redis errors that open the circuit (stop asking Redis); timeouts do not count."""
    redis_breaker_cooldown: float = 2.0
    """Seconds the circuit stays open before one request tries Redis again."""

    pg_pool_min: int = 2
    """Postgres connections each replica keeps open."""
    pg_pool_max: int = 8
    """Postgres connections each replica may open (misses only: keep it small)."""
    pg_wait_timeout: float = 0.5
    """Seconds a request waits for a Postgres connection before it gets 503."""
    pg_max_waiting: int = 256
    """Requests allowed to queue for a Postgres connection; more get 503 at once. As large as
    the replica's concurrency cap (SURGE_REDIS_POOL_SIZE): a cold cache queues every miss for a
    moment (each wait bounded by SURGE_PG_WAIT_TIMEOUT) instead of refusing most of them (64
    refused 81% of a cold pass at 256 connections, measured)."""
    pg_statement_timeout_ms: int = 2000
    """Server-side cap on one lookup query."""
    pg_connect_timeout: int = 2
    """Seconds to open a Postgres connection."""
    standby_replay_timeout: float = 60.0
    """Seconds the seeder (before a Redis switch) and an admin refresh (before it writes the
    record) wait for the standby (SURGE_DATABASE_READ_URL) to replay what they read from the
    primary; past it the seeder fails, the refresh answers 503, and Redis stays as it was."""

    live_refresh_interval: float = 0.5
    """Seconds between a replica's reads of the live dataset versions ({surge}:live)."""
    reseed_grace: float = 2.0
    """Seconds the seeder keeps the previous Redis version after switching to a new one: above
    twice SURGE_LIVE_REFRESH_INTERVAL plus SURGE_REDIS_TIMEOUT, so no replica still reads it."""

    refill_rate: int = 30_000
    """Records a second the redis-keeper (surge-seed --watch) refills an emptied Redis at,
    both datasets together; 0 = as fast as it can. Paced so that the refill leaves the
    replicas the CPU they serve with: the default dataset is whole again in about 45 s."""

    admin_token: str = ""
    """Bearer token of the /admin routes; empty (the default) leaves them out entirely."""

    local_cache_mb: int = 1024
    """MiB of rendered records each replica keeps in its own memory (warmed from Redis at start
    and after each reseed); 0 turns the copy off. The default dataset takes about 800."""
    http_max_age: int = 5
    """Seconds a client or CDN may reuse a record without asking (Cache-Control max-age): the
    longest a reader may see a record as it was before a reseed or refresh."""
    http_stale_if_error: int = 300
    """Seconds a CDN may keep serving its copy while surge answers with errors."""

    negative_cache_ttl: float = 30.0
    """Seconds an unknown id is remembered as unknown, so floods of it skip Postgres."""
    negative_cache_size: int = 100_000
    """Unknown ids remembered per replica at most."""
    retry_after: int = 1
    """Retry-After seconds on a 503."""

    metrics: bool = True
    """Serve /metrics and count requests (off only to measure what metrics cost)."""

    def __post_init__(self) -> None:
        if self.redis_mode not in REDIS_MODES:
            raise ValueError(
                f"{env_name('redis_mode')} must be one of {', '.join(REDIS_MODES)}, "
                f"got {self.redis_mode!r}"
            )
        if self.redis_nodes < 3:
            raise ValueError(
                f"{env_name('redis_nodes')} must be 3 or more (a Redis Cluster needs 3 masters), "
                f"got {self.redis_nodes}"
            )

    @property
    def cluster(self) -> bool:
        """Whether Redis is a Redis Cluster (SURGE_REDIS_MODE=cluster)."""
        return self.redis_mode == "cluster"

    @property
    def standby_url(self) -> str:
        """The standby's URL, or empty when there is none (fallback reads use the primary)."""
        return "" if self.database_read_url == self.database_url else self.database_read_url

    def production_problems(self) -> list[str]:
        """What keeps these settings from being used in production (empty when none)."""
        if self.environment != "production":
            return []
        problems = []
        databases = ["database_url", *(["database_read_url"] if self.database_read_url else [])]
        for name in databases:
            password = urlsplit(getattr(self, name)).password
            if not password or password == DEFAULT_PASSWORD:
                problems.append(f"{env_name(name)} needs a password of its own")
        if not urlsplit(self.redis_url).password:
            problems.append(f"{env_name('redis_url')} needs a password (redis://:PASSWORD@host)")
        return problems

    def refuse_unsafe_production(self) -> None:
        problems = self.production_problems()
        if problems:
            raise RuntimeError("refusing to start in production: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(type(f.default), raw)
        values.update(overrides)
        return cls(**values)


def _parse(kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.lower() not in _BOOLEANS:
            raise ValueError(f"expected one of {sorted(_BOOLEANS)}, got {raw!r}")
        return _BOOLEANS[raw.lower()]
    if kind is int:
        return int(raw.replace("_", ""))  # 664_824 reads like the figures in the docs
    return kind(raw)


_BOOLEANS = {"1": True, "true": True, "on": True, "yes": True,
             "0": False, "false": False, "off": False, "no": False}  # fmt: skip


def env_name(setting: str) -> str:
    """The environment variable behind a settings field, for messages and docs."""
    return _PREFIX + setting.upper()


__all__ = ["REDIS_MODES", "Settings", "env_name"]
