"""What one dataset (students, bookings) is to both the seeder and the API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

SCHEMA_SQL: str = files("api.contract").joinpath("schema.sql").read_text(encoding="utf-8")

# Records live in Redis hashes of ~100 entries, kept listpack-encoded: ~578 B/record against
# ~675 B for a key per record (measured, see DESIGN.md). Records are ~400-600 B of JSON, above
# Redis's default 64-byte listpack value limit, so the limit is raised. Entries stay at the
# default 128: a 1,000-entry listpack made HGET ~10x slower server-side.
REDIS_HASH_CONFIG: dict[str, str] = {
    "hash-max-listpack-entries": "128",
    "hash-max-listpack-value": "1024",
}

Row = Sequence[Any]


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
    slot: Callable[[Any], tuple[str, str]]
    """(Redis hash key, field) that holds the record with this canonical id."""
    select_one: str
    """SQL for one record by canonical id (one parameter); columns as render() expects."""
    select_all: str
    """SQL for every record, ordered by id, same columns: what the seeder copies into Redis."""
    render: Callable[[Row], bytes]
    """The record's JSON bytes from a row of select_one/select_all: the exact bytes served."""
    record_type: type
    """The msgspec Struct render() encodes: the one definition of the JSON fields (and docs)."""

    def record_id(self, row: Row) -> Any:
        """The canonical id of a selected row (always its first column)."""
        return row[0]
