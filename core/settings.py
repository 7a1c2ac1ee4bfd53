"""Every knob of surge, read from the environment once. Defaults work on a developer's machine.

One frozen dataclass per concern, so that each consumer takes only what it uses:

    StoreSettings    Postgres and Redis: URLs, client timeouts, pool, breaker, the standby's bound
    DatasetSettings  what the seeder makes: students, bookings, seed
    ApiSettings      the read path of a replica: copies, HTTP caching, negative cache, metrics,
                     admin token, Retry-After, its Postgres pool
    SeederSettings   the seeder and the redis-keeper: refill pace, reseed grace
    StackSettings    the local stack (`make up`): run dir, ports, replicas, nginx knobs, binaries

`Settings` holds them all (plus `environment`); `from_env` parses any one of them (or all) by
the same rules. A field's variable is its name upper-cased with the SURGE_ prefix (env_name), so
field names are unique across the concerns.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

_PREFIX = "SURGE_"
REDIS_MODES = ("single", "cluster")
DEFAULT_PASSWORD = "surge"  # local development only: production refuses it


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where Postgres and Redis are, and how long a call to either may take."""

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

    redis_timeout: float = 0.1
    """Seconds one Redis call may take before the request falls back to Postgres."""
    redis_pool_size: int = 256
    """Redis connections per replica; matches the replica's concurrency cap (backpressure)."""
    redis_breaker_failures: int = 3
    """Consecutive Redis errors that open the circuit (stop asking Redis); timeouts do not count."""
    redis_breaker_cooldown: float = 2.0
    """Seconds the circuit stays open before one request tries Redis again."""

    standby_replay_timeout: float = 60.0
    """Seconds the seeder (before a Redis switch) and an admin refresh (before it writes the
    record) wait for the standby (SURGE_DATABASE_READ_URL) to replay what they read from the
    primary; past it the seeder fails, the refresh answers 503, and Redis stays as it was."""

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


@dataclass(frozen=True, slots=True)
class DatasetSettings:
    """What the seeder makes; the same values give byte-identical data."""

    students: int = 664_824
    """How many students the seeder makes (ids start at 10,000)."""
    bookings: int = 500_000
    """How many bookings the seeder makes."""
    seed: int = 2026
    """Seed of the generator: the same seed gives the same data."""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """One replica's read path and routes."""

    pg_pool_min: int = 2
    """Postgres connections each replica keeps open."""
    pg_pool_max: int = 8
    """Postgres connections each replica may open (misses only: keep it small)."""
    pg_wait_timeout: float = 0.5
    """Seconds a request waits for a Postgres connection before it gets 503."""
    pg_max_waiting: int = 256
    """Requests allowed to queue for a Postgres connection; more get 503 at once. As large as
    the replica's concurrency cap (SURGE_REDIS_POOL_SIZE): a cold cache queues every miss for a
    moment (each wait bounded by SURGE_PG_WAIT_TIMEOUT) instead of refusing most of them."""
    pg_statement_timeout_ms: int = 2000
    """Server-side cap on one lookup query."""
    pg_connect_timeout: int = 2
    """Seconds to open a Postgres connection."""

    live_refresh_interval: float = 0.5
    """Seconds between a replica's reads of the live dataset versions ({surge}:live)."""

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


@dataclass(frozen=True, slots=True)
class SeederSettings:
    """How the seeder switches versions and how fast the redis-keeper refills."""

    reseed_grace: float = 2.0
    """Seconds the seeder keeps the previous Redis version after switching to a new one: above
    twice SURGE_LIVE_REFRESH_INTERVAL plus SURGE_REDIS_TIMEOUT, so no replica still reads it."""

    refill_rate: int = 40_000
    """Records a second the redis-keeper (surge-seed --watch) refills an emptied Redis at most,
    both datasets together; 0 = as fast as it can. The keeper slows below it while the machine
    is busy serving (seeder.redis_fill.Pacer): at half capacity the default dataset is whole
    again in about 45 s, at full load the refill leaves the replicas ~80% of their capacity."""


@dataclass(frozen=True, slots=True)
class StackSettings:
    """The local stack of `make up` (stack/): where it keeps its files, its ports, its processes.
    Neither the API nor the seeder reads these."""

    run_dir: str = ""
    """Data, logs, supervisord's config and socket, rendered configs (empty: .run in the
    checkout)."""
    replicas: int | None = None
    """API replicas (None: the `${SURGE_REPLICAS:-N}` default in compose.yaml, one number for
    both launchers)."""
    monitoring: bool = True
    """Prometheus and the exporters (off for benchmarks of the data path)."""
    postgres_standby: bool = False
    """Also run a streaming standby of the stack's own Postgres for the fallback reads."""
    redis_maxmemory: str = "3gb"
    """Redis's memory cap (compose.yaml has the same default): the default dataset takes
    ~0.7 GB, and a reseed fills a second version beside the live one."""
    prometheus_retention: str = "7d"
    """How long Prometheus keeps its samples."""

    http_port: int = 8080
    """nginx, the public entry."""
    nginx_status_port: int = 8081
    """nginx's stub_status, for the exporter only."""
    prometheus_port: int = 9090
    pg_port: int = 5432
    pg_standby_port: int = 5433
    """The streaming standby's, with SURGE_POSTGRES_STANDBY=1."""
    redis_port: int = 6379
    api_port_base: int = 8000
    """Replica n listens on api_port_base + n."""
    node_exporter_port: int = 9100
    nginx_exporter_port: int = 9113
    redis_exporter_port: int = 9121
    postgres_exporter_port: int = 9187
    mtail_port: int = 3903
    """mtail's /metrics: nginx's answers by status and route, from its access log."""

    # nginx's knobs, substituted into nginx/nginx.conf.template as they are (compose.yaml has
    # the same defaults).
    nginx_workers: str = "1"
    nginx_read_timeout: str = "5s"
    nginx_access_log: str = "off"
    nginx_microcache: str = "off"
    rate_limit: str = "on"
    """nginx's per-IP limit: `off` for load tests from one machine."""
    rate_limit_rate: str = "20r/s"
    rate_limit_burst: int = 40
    nginx_max_inflight: int = 256
    """Record requests nginx lets into the replicas at once; more get 503 + Retry-After."""
    nginx_spill_at: int = 24
    """Requests in flight on the first replica before nginx uses the others (0: all equal);
    why: stack.nginx.SPILL_AT."""

    nginx_bin: str = ""
    """nginx to run (empty: on PATH, else Debian's /usr/sbin/nginx)."""
    pg_bin: str = ""
    """Directory of Postgres's server programs (empty: Debian's newest /usr/lib/postgresql/*/bin,
    then pg_config --bindir, then PATH)."""
    redis_server: str = ""
    """redis-server to run (empty: on PATH)."""

    def __post_init__(self) -> None:
        for name, port in self.ports().items():
            if not 1 <= port <= 65535:
                raise ValueError(f"{env_name(name)} must be a TCP port number, not {port}")

    def ports(self) -> dict[str, int]:
        """Every port field by name (the stack's Layout)."""
        names = (f.name for f in fields(self))
        return {n: getattr(self, n) for n in names if n.endswith(("_port", "_port_base"))}


CONCERNS: dict[str, type] = {
    "stores": StoreSettings,
    "dataset": DatasetSettings,
    "api": ApiSettings,
    "seeder": SeederSettings,
    "stack": StackSettings,
}
"""Settings' attribute for each concern."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every concern's settings, parsed together; consumers take the parts they use."""

    environment: str = "development"
    """`production` refuses to start with the local default credentials."""
    stores: StoreSettings = field(default_factory=StoreSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    seeder: SeederSettings = field(default_factory=SeederSettings)
    stack: StackSettings = field(default_factory=StackSettings)

    def production_problems(self) -> list[str]:
        """What keeps these settings from being used in production (empty when none)."""
        if self.environment != "production":
            return []
        problems = []
        stores = self.stores
        databases = ["database_url", *(["database_read_url"] if stores.database_read_url else [])]
        for name in databases:
            password = urlsplit(getattr(stores, name)).password
            if not password or password == DEFAULT_PASSWORD:
                problems.append(f"{env_name(name)} needs a password of its own")
        if not urlsplit(stores.redis_url).password:
            problems.append(f"{env_name('redis_url')} needs a password (redis://:PASSWORD@host)")
        return problems

    def refuse_unsafe_production(self) -> None:
        problems = self.production_problems()
        if problems:
            raise RuntimeError("refusing to start in production: " + "; ".join(problems))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, named as their variables are (seed=7,
        redis_url=...): each goes to its concern."""
        own = {k: changes.pop(k) for k in list(changes) if k == "environment"}
        parts: dict[str, Any] = {}
        for attr, concern in CONCERNS.items():
            mine = {k: changes.pop(k) for k in list(changes) if k in _names(concern)}
            if mine:
                parts[attr] = dataclasses.replace(getattr(self, attr), **mine)
        if changes:
            raise TypeError(f"no such setting(s): {', '.join(sorted(changes))}")
        return dataclasses.replace(self, **own, **parts)

    def as_env(self, *, stack: bool = False) -> dict[str, str]:
        """These settings as the environment variables that give them (a child process's),
        without the local stack's unless `stack`."""
        env = {env_name("environment"): self.environment}
        for attr, concern in CONCERNS.items():
            if concern is StackSettings and not stack:
                continue
            part = getattr(self, attr)
            for name in _names(concern):
                value = getattr(part, name)
                if value is not None:
                    env[env_name(name)] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        raw = env.get(env_name("environment"))
        settings = cls(
            environment=raw or "development",
            **{attr: from_env(concern, env) for attr, concern in CONCERNS.items()},
        )
        return settings.replace(**overrides) if overrides else settings


T = TypeVar("T")


def from_env(concern: type[T], environ: Mapping[str, str] | None = None) -> T:
    """One concern's settings from SURGE_<FIELD> variables; an unset or empty variable keeps the
    default. Raises ValueError naming the variable when a value does not parse."""
    env = os.environ if environ is None else environ
    kinds = typing.get_type_hints(concern)
    values: dict[str, Any] = {}
    for f in fields(concern):  # type: ignore[arg-type]
        name = env_name(f.name)
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            values[f.name] = _parse(name, kinds[f.name], raw.strip())
    return concern(**values)


def _parse(name: str, kind: Any, raw: str) -> Any:
    if isinstance(kind, types.UnionType):  # `int | None`: a value given is never None
        (kind,) = (k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if raw.lower() not in _BOOLEANS:
            raise ValueError(f"{name} must be one of {sorted(_BOOLEANS)}, not {raw!r}")
        return _BOOLEANS[raw.lower()]
    try:
        if kind is int:
            return int(raw.replace("_", ""))  # 664_824 reads like the figures in the docs
        return kind(raw)
    except ValueError:
        what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"{name} must be {what}, not {raw!r}") from None


_BOOLEANS = {"1": True, "true": True, "on": True, "yes": True,
             "0": False, "false": False, "off": False, "no": False}  # fmt: skip


def _names(concern: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(concern))


def env_name(setting: str) -> str:
    """The environment variable behind a settings field, for messages and docs."""
    return _PREFIX + setting.upper()


def env_names(*concerns: type) -> set[str]:
    """The variables behind these concerns (default: every one) and SURGE_ENVIRONMENT."""
    chosen = concerns or tuple(CONCERNS.values())
    return {env_name("environment")} | {env_name(n) for c in chosen for n in _names(c)}


SERVICE_CONCERNS: tuple[type, ...] = (StoreSettings, DatasetSettings, ApiSettings, SeederSettings)
"""What the API and the seeder read (with SURGE_ENVIRONMENT): all but the local stack's."""


__all__ = [
    "CONCERNS",
    "SERVICE_CONCERNS",
    "ApiSettings",
    "DatasetSettings",
    "SeederSettings",
    "Settings",
    "StackSettings",
    "StoreSettings",
    "env_name",
    "env_names",
    "from_env",
]
