"""The data contract shared by seeder and API: SQL schema, Redis key layout, record renderer,
and when a standby has caught up.

Nothing outside this package defines a table, a Redis key or a JSON field. The seeder imports it;
it imports nothing from the seeder.
"""

from api.contract.bookings import BOOKINGS
from api.contract.dataset import (
    CONTROL_KEYS,
    FILLING_KEY,
    LEGACY_CONTROL_KEYS,
    LIVE_KEY,
    MARKER_KEY,
    REDIS_HASH_CONFIG,
    REFRESHED_KEEP,
    REFRESHED_KEY,
    SCHEMA_SQL,
    UNSEEDED_VERSION,
    VERSIONS_KEY,
    Dataset,
    parse_version,
    stamp,
)
from api.contract.standby import PRIMARY_WAL_POSITION, STANDBY_REPLAYED
from api.contract.students import STUDENTS

DATASETS: tuple[Dataset, ...] = (STUDENTS, BOOKINGS)

__all__ = [
    "BOOKINGS",
    "CONTROL_KEYS",
    "DATASETS",
    "FILLING_KEY",
    "LEGACY_CONTROL_KEYS",
    "LIVE_KEY",
    "MARKER_KEY",
    "PRIMARY_WAL_POSITION",
    "REDIS_HASH_CONFIG",
    "REFRESHED_KEEP",
    "REFRESHED_KEY",
    "SCHEMA_SQL",
    "STANDBY_REPLAYED",
    "STUDENTS",
    "UNSEEDED_VERSION",
    "VERSIONS_KEY",
    "Dataset",
    "parse_version",
    "stamp",
]
