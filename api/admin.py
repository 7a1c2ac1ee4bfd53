"""Admin routes of one replica: the cache's state, a reseed trigger, a one-record refresh.

Registered only when SURGE_ADMIN_TOKEN is set (absent otherwise: 404 like any unknown path), and
then only for requests carrying `Authorization: Bearer <token>`, compared in constant time.
nginx proxies only the public routes, so /admin is reachable on a replica's own port alone. The
routes are left out of the OpenAPI schema: it documents the public API that /docs serves.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sys
import tempfile
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, FromQuery

from api.contract import DATASETS, LIVE_KEY, MARKER_KEY, parse_version, stamp
from api.errors import problem_response
from api.lookup import POSTGRES_FAULTS, REDIS_FAULTS, Lookup
from api.settings import Settings, env_name

log = logging.getLogger("surge.admin")

# The seeder names its Postgres sessions so (seeder.postgres.APPLICATION_NAME; the API may not
# import the seeder): one running anywhere, started by any replica or by hand, refuses another.
_SEEDER_APPLICATION = "surge-seed"


class DatasetCache(msgspec.Struct, frozen=True):
    postgres_rows: int | None
    """Rows dataset_meta says Postgres holds (null: Postgres unreachable or never seeded)."""
    postgres_seed: int | None
    postgres_loaded_at: str | None
    """When the Postgres load finished."""
    redis_records: int | None
    """Records of the live Redis version, as its fill counted them."""
    redis_hashes: int | None
    live_version: int | None
    """The version {surge}:live names (0: not seeded); null when Redis is unreachable."""
    replica_version: int
    """The version this replica reads now (follows live_version within the refresh interval)."""
    switched_at: str | None
    """When the live version went live: the last reseed of this dataset's cache."""
    in_sync: bool
    """The live Redis version was filled from exactly the load Postgres holds."""


class ReseedState(msgspec.Struct, frozen=True):
    running: bool
    pid: int | None = None
    started_at: str | None = None
    exit_code: int | None = None
    log: str | None = None
    """File with the seeder's output."""


class CacheView(msgspec.Struct, frozen=True):
    datasets: dict[str, DatasetCache]
    reseed: ReseedState


class Refreshed(msgspec.Struct, frozen=True):
    dataset: str
    id: str
    version: int
    """The Redis version written."""
    action: str
    """"updated" (the record as Postgres has it now) or "deleted" (Postgres no longer has it)."""


def _bearer_guard(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        given = connection.headers.get("authorization", "").encode()
        # Constant time: how long the comparison takes says nothing about the token.
        if not hmac.compare_digest(given, expected):
            raise NotAuthorizedException(
                detail="The admin routes need the admin bearer token.",
                headers={"WWW-Authenticate": 'Bearer realm="surge-admin"'},
            )

    return guard


class Reseeder:
    """At most one seeder subprocess started by this replica, and what became of the last one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self.started_at: str | None = None
        self.log_path: str | None = None
        self._reaper: asyncio.Task[int] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def state(self) -> ReseedState:
        if self.process is None:
            return ReseedState(running=False)
        return ReseedState(
            running=self.running,
            pid=self.process.pid,
            started_at=self.started_at,
            exit_code=self.process.returncode,
            log=self.log_path,
        )

    async def start(self, reset: bool) -> ReseedState:
        # The child seeds the stores this replica reads, whatever its own environment says.
        env = dict(os.environ)
        for f in fields(self.settings):
            env[env_name(f.name)] = str(getattr(self.settings, f.name))
        del env[env_name("admin_token")]  # the seeder has no use for it
        args = [sys.executable, "-m", "seeder", "--no-progress", *(["--reset"] if reset else [])]
        fd, self.log_path = tempfile.mkstemp(prefix="surge-reseed-", suffix=".log")
        with os.fdopen(fd, "wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *args, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        self.started_at = stamp(datetime.now(UTC))
        log.info("reseed started: pid %s, output in %s", self.process.pid, self.log_path)
        # Reaped in the background, so it never lingers as a zombie and its exit code is known;
        # the reference keeps the task from being garbage-collected while it waits.
        self._reaper = asyncio.create_task(self.process.wait())
        self._reaper.add_done_callback(lambda _: log.info("reseed ended: %s", self.state()))
        return self.state()


async def _seeder_running_anywhere(lookup: Lookup) -> bool:
    try:
        async with lookup.postgres.connection() as conn:
            cursor = await conn.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = %s)",
                (_SEEDER_APPLICATION,),
            )
            row = await cursor.fetchone()
    except POSTGRES_FAULTS:
        return False  # the seeder cannot run without Postgres either; let it report that
    return bool(row and row[0])


async def _cache_view(lookup: Lookup, reseeder: Reseeder) -> CacheView:
    loads: dict[str, tuple[int, int, Any]] | None = None
    try:
        async with lookup.postgres.connection() as conn:
            cursor = await conn.execute("SELECT dataset, seed, rows, loaded_at FROM dataset_meta")
            loads = {name: (seed, rows, at) for name, seed, rows, at in await cursor.fetchall()}
    except POSTGRES_FAULTS as exc:
        log.warning("admin view: postgres unavailable: %r", exc)
    markers: dict[bytes, bytes] | None = None
    live: dict[bytes, bytes] = {}
    try:
        pipe = lookup.redis.pipeline(transaction=False)
        pipe.hgetall(MARKER_KEY)
        pipe.hgetall(LIVE_KEY)
        markers, live = await pipe.execute()
    except REDIS_FAULTS as exc:
        log.warning("admin view: redis unavailable: %r", exc)

    datasets = {}
    for dataset in DATASETS:
        load = (loads or {}).get(dataset.name)
        raw = (markers or {}).get(dataset.name.encode())
        marker = msgspec.json.decode(raw) if raw else {}
        live_version = None if markers is None else parse_version(live.get(dataset.name.encode()))
        in_sync = (
            load is not None
            and bool(marker)
            and marker.get("version") == live_version
            and (marker.get("seed"), marker.get("rows"), marker.get("loaded_at"))
            == (load[0], load[1], stamp(load[2]))
        )
        datasets[dataset.name] = DatasetCache(
            postgres_rows=load[1] if load else None,
            postgres_seed=load[0] if load else None,
            postgres_loaded_at=stamp(load[2]) if load else None,
            redis_records=marker.get("records"),
            redis_hashes=marker.get("keys"),
            live_version=live_version,
            replica_version=lookup.live[dataset.name],
            switched_at=marker.get("switched_at") or None,
            in_sync=in_sync,
        )
    return CacheView(datasets=datasets, reseed=reseeder.state())


def admin_router(settings: Settings, lookup: Lookup) -> Router | None:
    """The /admin routes, or None when no admin token is configured."""
    if not settings.admin_token:
        return None
    reseeder = Reseeder(settings)
    by_name = {dataset.name: dataset for dataset in DATASETS}

    @get("/cache", summary="Per dataset: Postgres rows, Redis records, live version, in sync")
    async def cache() -> CacheView:
        return await _cache_view(lookup, reseeder)

    @post("/reseed", status_code=202, summary="Run the seeder in the background")
    async def reseed(reset: FromQuery[bool] = False) -> Response[Any]:
        if reseeder.running or await _seeder_running_anywhere(lookup):
            return problem_response(409, "Conflict", "A reseed is already running.")
        state = await reseeder.start(reset)
        # Where to watch it: /admin/cache shows the reseed's state and, after, the new versions.
        return Response(state, status_code=202, headers={"Location": "/admin/cache"})

    @post("/{dataset:str}/{record_id:str}/refresh", status_code=200, summary="Refresh one record")
    async def refresh(dataset: FromPath[str], record_id: FromPath[str]) -> Refreshed:
        kind = by_name.get(dataset)
        if kind is None:
            raise NotFoundException(detail=f"No dataset named {dataset!r}.")
        key = kind.parse_id(record_id)
        if key is None:
            raise ValidationException(detail=f"Invalid {kind.noun} id: {kind.id_rule}.")
        version, found = await lookup.refresh_record(kind, key)
        return Refreshed(
            dataset=kind.name,
            id=str(key),
            version=version,
            action="updated" if found else "deleted",
        )

    return Router(
        "/admin",
        route_handlers=[cache, reseed, refresh],
        guards=[_bearer_guard(settings.admin_token)],
        include_in_schema=False,
    )


__all__ = ["admin_router"]
