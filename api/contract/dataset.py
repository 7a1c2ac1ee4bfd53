"""What one dataset (students, bookings) is to both the seeder and the API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

SCHEMA_SQL: str = files("api.contract").joinpath("schema.sql").read_text(encoding="utf-8")

# Records live in Redis hashes of ~100 entries, kept listpack-encoded: ~578 B/record against
# ~675 B for a key per record (docs/architecture.md). Records are ~400-600 B of JSON, above
# Redis's default 64-byte listpack value limit, so the limit is raised. Entries stay at the
# default 128: a 1,000-entry listpack made HGET ~10x slower server-side.
REDIS_HASH_CONFIG: dict[str, str] = {
    "hash-max-listpack-entries": "128",
    "hash-max-listpack-value": "1024",
}

Row = Sequence[Any]

# Control keys carry the hash tag {surge}: in a Redis Cluster they share one slot (one node), so
# the version switch changes them in one MULTI, and a replica reads them in one round trip.
# Records ("students:v3:1234") have no tag and spread over every slot. One layout for both modes;
# a Redis holding the names from before the tag ("surge:live") reads as unseeded and is refilled
# (LEGACY_CONTROL_KEYS are then removed).
# Versions: every record key carries the dataset version it belongs to ("students:v3:1234"), so
# a reseed fills a new version beside the live one and switches readers over in one HSET.
# LIVE_KEY maps dataset name -> live version (decimal). Version 0 is "not seeded": what the API
# reads and writes back to while LIVE_KEY has no entry (an empty or flushed Redis); the seeder's
# versions start at 1.
LIVE_KEY = "{surge}:live"
UNSEEDED_VERSION = 0
# dataset name -> JSON of the seeder's fill behind the live version (seeder.redis_fill.Filled):
# which Postgres load (seed, rows, loaded_at as stamp() writes it) it came from, records, hashes.
MARKER_KEY = "{surge}:meta"
# A stream of single-record refreshes (fields: dataset, id), newest REFRESHED_KEEP kept: every
# replica reads it with {surge}:live and drops its own copy of each record named there.
REFRESHED_KEY = "{surge}:refreshed"
REFRESHED_KEEP = 10_000
# The last version handed out per dataset (the seeder's counter).
VERSIONS_KEY = "{surge}:versions"
# dataset -> the version a fill is writing. A flush or restart during the fill deletes it, and
# the seeder's switch then refuses to make that version live: it lacks what was written before.
FILLING_KEY = "{surge}:filling"
CONTROL_KEYS = (LIVE_KEY, MARKER_KEY, REFRESHED_KEY, VERSIONS_KEY, FILLING_KEY)
LEGACY_CONTROL_KEYS = ("surge:live", "surge:meta", "surge:refreshed", "surge:versions")


def stamp(moment: datetime) -> str:
    """A timestamp as {surge}:meta stores it: the same text whatever the session's time zone."""
    return moment.astimezone(UTC).isoformat()


def parse_version(raw: bytes | str | None) -> int:
    """A version as LIVE_KEY stores it; absent means not seeded."""
    return UNSEEDED_VERSION if raw is None else int(raw)


@dataclass(frozen=True, slots=True)
class Dataset:
    """One kind of record: its ids, its place in Redis, how it is read and rendered."""

    name: str
    """Plural name: the route segment (/students/{id}), the table, the metric label."""
    noun: str
    """Singular, for messages ("student")."""
    id_rule: str
    """What a valid id looks like, said to a client that sent a bad one."""
    id_pattern: str
    """The same rule as a regular expression, for the OpenAPI schema (parse_id is the check)."""
    parse_id: Callable[[str], Any | None]
    """The canonical id for a raw path segment, or None when the segment is not a valid id."""
    slot: Callable[[Any, int], tuple[str, str]]
    """(Redis hash key, field) that holds the record with this canonical id in this dataset
    version: one f-string, as it runs on every request. Keys are "<name>:v<version>:<bucket>"."""
    unslot: Callable[[bytes, bytes], Any]
    """The canonical id of the record at (Redis hash key, field): slot() read backwards, for
    copying a whole version out of Redis."""
    select_one: str
    """SQL for one record by canonical id (one parameter); columns as render() expects."""
    select_all: str
    """SQL for every record, ordered by id, same columns: what the seeder copies into Redis."""
    render: Callable[[Row], bytes]
    """The record's JSON bytes from a row of select_one/select_all: the exact bytes served."""
    record_type: type
    """The msgspec Struct render() encodes: the one definition of the JSON fields (and docs)."""

    def live_slot(self, client: Any, record_id: Any) -> tuple[str, str]:
        """slot() in the version {surge}:live names now, asked of a synchronous redis-py client:
        for tools and tests. The API keeps the live versions in memory instead."""
        return self.slot(record_id, parse_version(client.hget(LIVE_KEY, self.name)))

    def version_pattern(self, version: int | None = None) -> str:
        """SCAN pattern for the keys of one version of this dataset, or of every version."""
        return f"{self.name}:v{'*' if version is None else version}:*"

    def key_version(self, key: bytes | str) -> int:
        """The version a key of this dataset belongs to ("students:v3:12" -> 3)."""
        text = key.decode() if isinstance(key, bytes) else key
        return int(text.split(":", 2)[1][1:])

    def record_id(self, row: Row) -> Any:
        """The canonical id of a selected row (always its first column)."""
        return row[0]
