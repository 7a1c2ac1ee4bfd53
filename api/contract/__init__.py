"""The data contract shared by seeder and API: SQL schema, Redis key layout, record renderer.

Nothing outside this package defines a table, a Redis key or a JSON field. The seeder imports it;
it imports nothing from the seeder.
"""

from api.contract.bookings import BOOKINGS
from api.contract.dataset import (
    LIVE_KEY,
    MARKER_KEY,
    REDIS_HASH_CONFIG,
    REFRESHED_KEEP,
    REFRESHED_KEY,
    SCHEMA_SQL,
    UNSEEDED_VERSION,
    Dataset,
    parse_version,
    stamp,
)
from api.contract.students import STUDENTS

DATASETS: tuple[Dataset, ...] = (STUDENTS, BOOKINGS)

__all__ = [
    "BOOKINGS",
    "DATASETS",
    "LIVE_KEY",
    "MARKER_KEY",
    "REDIS_HASH_CONFIG",
    "REFRESHED_KEEP",
    "REFRESHED_KEY",
    "SCHEMA_SQL",
    "STUDENTS",
    "UNSEEDED_VERSION",
    "Dataset",
    "parse_version",
    "stamp",
]
