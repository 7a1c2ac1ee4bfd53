"""Write a sample of real booking ids from Postgres to a JSON file the k6 scripts read.

Booking ids are random UUIDs that only the database knows, unlike student ids, which k6 computes
from SURGE_STUDENTS. The k6 scripts load this file once into a SharedArray (k6/lib/ids.js); the
make targets run this script first, so the sample always matches the data being tested.

    python k6/export_ids.py [--count 10000] [--out .run/k6/booking-ids.json]

Postgres is SURGE_DATABASE_URL (the same setting the API reads) unless --database-url is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import psycopg

from core.contract import BOOKINGS
from core.settings import StoreSettings, env_name, from_env

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".run" / "k6" / "booking-ids.json"
DEFAULT_COUNT = 10_000

# Ordered by a hash of the id rather than by the id: the first N ids in id order all share a few
# leading hex digits, i.e. a few Redis hashes (core/contract/bookings.py), which is not how real
# traffic spreads. md5 order is spread over all of them and the same on every run.
_SAMPLE_SQL = f"SELECT id::text FROM {BOOKINGS.name} ORDER BY md5(id::text) LIMIT %s"


def sample_booking_ids(database_url: str, count: int) -> list[str]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        return [row[0] for row in conn.execute(_SAMPLE_SQL, (count,))]


def write_ids(ids: list[str], out: Path) -> None:
    """Write atomically: a k6 run starting meanwhile reads the old file or the new one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(ids) + "\n", encoding="utf-8")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=DEFAULT_COUNT, help=f"ids to write (default {DEFAULT_COUNT})"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON file (default .run/k6/booking-ids.json)"
    )
    parser.add_argument(
        "--database-url", help=f"libpq URL (default: {env_name('database_url')} or its default)"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")

    database_url = args.database_url or from_env(StoreSettings).database_url
    try:
        ids = sample_booking_ids(database_url, args.count)
    except psycopg.Error as exc:
        print(f"export_ids: cannot read bookings from Postgres: {exc}".rstrip(), file=sys.stderr)
        print("export_ids: is the stack up (`make up`) and seeded?", file=sys.stderr)
        return 1
    if not ids:
        print("export_ids: the bookings table is empty; seed it first", file=sys.stderr)
        return 1
    write_ids(ids, args.out)
    print(f"export_ids: {len(ids)} booking ids -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
