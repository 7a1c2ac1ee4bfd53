"""surge's seeder: synthetic exam results and bookings into Postgres (COPY), then into Redis from
Postgres, using the data contract in core.contract. Safe to run again: it does only what is missing.
"""

from seeder.core import DatasetReport, SeedReport, seed
from seeder.progress import Phase

__all__ = ["DatasetReport", "Phase", "SeedReport", "seed"]
