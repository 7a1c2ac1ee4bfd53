"""The machine a benchmark ran on, for every report: figures mean little without it."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path

import psycopg
import redis

from core.settings import Settings

PACKAGES = (
    "litestar", "granian", "uvloop", "psycopg", "psycopg-binary", "psycopg-pool", "redis",
    "hiredis", "msgspec", "orjson", "faker", "rich",
)  # fmt: skip


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(settings: Settings) -> list[tuple[str, str]]:
    with psycopg.connect(settings.stores.database_url) as conn:
        pg = {
            name: conn.execute(f"SHOW {name}").fetchall()[0][0]
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_level",
                "full_page_writes",
                "shared_buffers",
                "max_wal_size",
            )
        }
    redis_version = "did not answer"  # a step with Redis servers of its own needs none here
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(settings.stores.redis_url)
        redis_version = client.info("server")["redis_version"]
        client.close()
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", _cpu_model()),
        ("memory", _memory()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("packages", versions),
        ("Postgres", pg.pop("server_version")),
        ("Postgres settings", ", ".join(f"{k}={v}" for k, v in pg.items())),
        ("Redis", redis_version),
    ]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _memory() -> str:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return "unknown"
    return f"{pages * size / 2**30:.1f} GiB"
