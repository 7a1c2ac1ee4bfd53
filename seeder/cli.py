"""surge-seed / python -m seeder: the command line around seeder.seed()."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis
from rich.console import Console
from rich.table import Table

from api.contract import DATASETS
from api.settings import Settings, env_name
from seeder import redis_fill
from seeder.core import SeedReport, run
from seeder.postgres import StandbyBehind
from seeder.progress import PlainReporter, Reporter, RichReporter


def _count(raw: str) -> int:
    value = int(raw.replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _parser(defaults: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surge-seed",
        description=(
            "Generate the exam-result and booking datasets, bulk-load them into Postgres and "
            "copy them from Postgres into Redis. Runs again only what is out of date: the same "
            "parameters twice change nothing. Safe while the API serves: Postgres tables are "
            "swapped in and Redis gets a new version, switched atomically. Defaults come from "
            "the SURGE_* environment."
        ),
    )

    def option(name: str, kind: Callable[[str], Any], what: str) -> None:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=getattr(defaults, name),
            metavar=name.upper(),
            help=f"{what} (env {env_name(name)}; now %(default)s)",
        )

    option("students", _count, "students to generate, ids from 10000")
    option("bookings", _count, "bookings to generate")
    option("seed", int, "generator seed: the same seed gives byte-identical data")
    option("database_url", str, "Postgres URL")
    option(
        "database_read_url",
        str,
        "the standby the replicas read from, whose replay of each load the Redis switch waits "
        "for (empty: none)",
    )
    option("redis_url", str, "Redis URL")
    parser.add_argument(
        "--reset",
        action="store_true",
        help="rebuild both datasets in both stores even if they are in sync "
        "(other data in Redis is left alone)",
    )
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="keep running: every SECONDS, seed again whatever is out of date (a Redis that "
        "restarted empty or was flushed is refilled from Postgres, its live versions and "
        "metadata included); prints only what it did",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="plain lines instead of progress bars (also the default when not on a terminal)",
    )
    return parser


def summary(report: SeedReport) -> list[Table]:
    phases = Table(title="phases", title_justify="left")
    for column in ("phase", "rows", "seconds", "rows/s"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for phase in report.phases:
        phases.add_row(
            phase.name, f"{phase.rows:,}", f"{phase.seconds:.2f}", f"{phase.rows_per_second:,.0f}"
        )
    datasets = Table(caption=f"seeded in {report.seconds:.1f} s", caption_justify="left")
    columns = ("dataset", "records", "postgres", "redis", "live version", "redis hashes")
    for column in (*columns, "redis B/record"):
        datasets.add_column(column, justify="left" if column == "dataset" else "right")
    for d in report.datasets.values():
        datasets.add_row(
            d.name,
            f"{d.records:,}",
            "in sync" if d.postgres_skipped else "loaded",
            "in sync" if d.redis_skipped else "filled",
            f"v{d.redis_version}",
            f"{d.redis_keys:,}",
            f"{d.redis_bytes_per_record:,.0f}",
        )
    return [phases, datasets] if report.phases else [datasets]


def main(argv: list[str] | None = None) -> int:
    defaults = Settings.from_env()
    args = _parser(defaults).parse_args(argv)
    settings = dataclasses.replace(
        defaults,
        students=args.students,
        bookings=args.bookings,
        seed=args.seed,
        database_url=args.database_url,
        database_read_url=args.database_read_url,
        redis_url=args.redis_url,
    )
    console, errors = Console(), Console(stderr=True)
    if args.watch:
        return watch(settings, args.watch, console, errors)
    bars = console.is_terminal and not args.no_progress
    reporter = RichReporter(console) if bars else PlainReporter(console.file)
    try:
        report = run(settings, reset=args.reset, reporter=reporter)
    except (psycopg.OperationalError, redis.ConnectionError) as exc:
        errors.print(f"surge-seed: store unavailable: {exc}", style="red", highlight=False)
        return 1
    except StandbyBehind as exc:
        errors.print(f"surge-seed: {exc}", style="red", highlight=False)
        return 1
    except KeyboardInterrupt:
        # Postgres rolled back the dataset being loaded; Redis is refilled by the next run.
        errors.print("surge-seed: interrupted", style="red")
        return 130
    finally:
        reporter.close()
    for table in summary(report):
        console.print(table)
    return 0


def watch(settings: Settings, every: float, console: Console, errors: Console) -> int:
    """Seed what is out of date every `every` seconds until stopped (SIGTERM, Ctrl-C)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    down = False
    client = redis_fill.connect(settings.redis_url, cluster=settings.cluster)
    try:
        while True:
            try:
                # The full check (SCANs every key) only when the cheap one says something is gone.
                if not redis_fill.looks_whole(client, DATASETS):
                    report = run(
                        settings, reset=False, reporter=Reporter(), pace=settings.refill_rate
                    )
                    console.print(f"surge-seed --watch: {report}", highlight=False)
            except (psycopg.OperationalError, redis.RedisError, StandbyBehind) as exc:
                if not down:  # once per outage
                    errors.print(f"surge-seed: store unavailable, retrying: {exc}", style="red")
                down = True
            else:
                down = False
            time.sleep(every)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
