"""Benchmark: the full default seed (664,824 students + 500,000 bookings) into both stores.

    python -m bench.seed                                   # throwaway servers of its own
    python -m bench.seed --database-url URL --redis-url URL  # existing stores (data is replaced)

Each run is `seed(reset=True)`: generate, COPY into Postgres, fill Redis from Postgres. Then one
run with the same parameters shows what an in-sync re-run costs. The figures are printed and
written as markdown to docs/benchmarks/seed-<date>.md, with the machine they were measured on.
Without URLs, the Postgres server it starts has default durability settings (fsync on);
--pg-setting adds `-c name=value` parameters to it, to measure what a setting is worth.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.machine import machine
from core.settings import Settings
from seeder import SeedReport, seed
from seeder.core import run
from seeder.progress import PlainReporter

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def own_servers(pg_settings: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Throwaway Postgres and Redis on free ports, stopped and deleted afterwards."""
    from stack.servers import PostgresServer, RedisServer, free_port

    with tempfile.TemporaryDirectory(prefix="surge-bench-") as tmp:
        Path(tmp).chmod(0o755)  # Postgres may run as the postgres user (when we are root)
        postgres = PostgresServer(
            Path(tmp) / "pg", free_port(), Path(tmp) / "sock", settings=pg_settings
        ).start()
        try:
            redis_server = RedisServer(Path(tmp) / "redis", free_port()).start()
            try:
                yield postgres.url, redis_server.url
            finally:
                redis_server.stop()
        finally:
            postgres.stop()


def markdown(
    settings: Settings, runs: list[SeedReport], rerun: SeedReport, about: list[tuple[str, str]]
) -> str:
    totals = [r.seconds for r in runs]
    best = min(runs, key=lambda r: r.seconds)
    data = settings.dataset
    lines = [
        f"# Seed benchmark, {datetime.date.today().isoformat()}",
        "",
        f"`python -m bench.seed` — {data.students:,} students and {data.bookings:,} "
        f"bookings (seed {data.seed}) into Postgres (COPY) and Redis (from Postgres), "
        f"`seed(reset=True)` in-process, {len(runs)} run(s).",
        "",
        f"**Full seed: best {min(totals):.1f} s, median {statistics.median(totals):.1f} s** "
        f"(runs: {', '.join(f'{t:.1f}' for t in totals)} s; target ≤ 60 s). "
        f"Re-run with the same parameters (everything in sync): {rerun.seconds:.2f} s.",
        "",
        "## Phases of the best run",
        "",
        "The two datasets are seeded side by side (one thread each), so phases overlap and",
        "their seconds add up to more than the total.",
        "",
        "| phase | rows | seconds | rows/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {p.name} | {p.rows:,} | {p.seconds:.2f} | {p.rows_per_second:,.0f} |"
        for p in best.phases
    ]
    lines += [
        "",
        "## Redis",
        "",
        "| dataset | records | hashes | bytes/record |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {d.name} | {d.records:,} | {d.redis_keys:,} | {d.redis_bytes_per_record:,.0f} |"
        for d in best.datasets.values()
    ]
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in about]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--database-url", help="existing Postgres (default: start one)")
    parser.add_argument("--redis-url", help="existing Redis (default: start one)")
    parser.add_argument("--students", type=int, default=defaults.dataset.students)
    parser.add_argument("--bookings", type=int, default=defaults.dataset.bookings)
    parser.add_argument("--seed", type=int, default=defaults.dataset.seed)
    parser.add_argument("--runs", type=int, default=1, help="full seeds to time (default 1)")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra parameter for the Postgres this script starts (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, help="markdown report (default docs/benchmarks/seed-<date>.md)"
    )
    args = parser.parse_args(argv)
    if (args.database_url is None) != (args.redis_url is None):
        parser.error("give both --database-url and --redis-url, or neither")

    @contextmanager
    def stores() -> Iterator[tuple[str, str]]:
        if args.database_url:
            yield args.database_url, args.redis_url
        else:
            with own_servers(dict(s.split("=", 1) for s in args.pg_setting)) as urls:
                yield urls

    with stores() as (database_url, redis_url):
        settings = defaults.replace(
            database_url=database_url,
            redis_url=redis_url,
            students=args.students,
            bookings=args.bookings,
            seed=args.seed,
        )
        runs = []
        for n in range(1, args.runs + 1):
            print(f"run {n}/{args.runs}: seed(reset=True)", flush=True)
            report = run(settings, reset=True, reporter=PlainReporter())
            print(f"  {report}", flush=True)
            runs.append(report)
        rerun = seed(settings)
        print(f"re-run in sync: {rerun}", flush=True)
        about = machine(settings)

    report_md = markdown(settings, runs, rerun, about)
    out = args.out or ROOT / "docs" / "benchmarks" / f"seed-{datetime.date.today():%Y-%m-%d}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_md, encoding="utf-8")
    print(report_md)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
