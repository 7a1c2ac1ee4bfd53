"""What mtail (and the access log it reads) costs nginx's host, in CPU per request.

`python -m bench.mtail_cost`: the launcher's stack in a temp dir on free ports (2 replicas, the
small dataset of the tests, monitoring on), then bounded wrk runs through its nginx, alternating
between the default (access log on, mtail tailing it) and SURGE_NGINX_ACCESS_LOG=off (neither).
CPU of nginx's and mtail's process groups comes from /proc, before and after each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.replicas import cpu_seconds
from bench.wrk import wrk
from stack.launcher import ROOT, Layout, Stack, spare_env
from stack.servers import HOST

STUDENTS = 2_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode (default 3)")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="surge-bench-mtail-"))
    run.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env |= spare_env(run, 2) | {
        "SURGE_REPLICAS": "2", "SURGE_STUDENTS": str(STUDENTS), "SURGE_BOOKINGS": "1000",
        "SURGE_RATE_LIMIT": "off",
    }  # fmt: skip
    layout = Layout.from_env(env)
    url = f"http://{HOST}:{layout.http_port}"

    def up(**extra: str) -> None:
        subprocess.run([sys.executable, "-m", "stack", "up"], cwd=ROOT, env=env | extra,
                       check=True, capture_output=True, timeout=300)  # fmt: skip

    results: dict[str, list[tuple[int, float, float]]] = {"mtail": [], "off": []}
    try:
        for _ in range(args.rounds):
            for mode, extra in (("mtail", {}), ("off", {"SURGE_NGINX_ACCESS_LOG": "off"})):
                up(**extra)
                groups = Stack(layout, env | extra).process_groups()
                nginx, mtail = groups["nginx"], groups.get("mtail", [])
                before = cpu_seconds(nginx), cpu_seconds(mtail)
                out = wrk(url, args.seconds, args.connections, "random_students.lua",
                          10_000, 10_000 + STUDENTS - 1)  # fmt: skip
                after = cpu_seconds(nginx), cpu_seconds(mtail)
                # mtail reads the last second's lines after wrk stops (nginx flushes every 1 s)
                if mtail:
                    subprocess.run(["sleep", "2"], check=True)
                    after = after[0], cpu_seconds(mtail)
                n = int(out["requests"])
                results[mode].append((n, after[0] - before[0], after[1] - before[1]))
    finally:
        subprocess.run([sys.executable, "-m", "stack", "down"], cwd=ROOT, env=env,
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(run, ignore_errors=True)

    for mode, rows in results.items():
        n = sum(r[0] for r in rows)
        nginx_us = sum(r[1] for r in rows) / n * 1e6
        mtail_us = sum(r[2] for r in rows) / n * 1e6
        rps = [round(r[0] / args.seconds) for r in rows]
        print(f"{mode:>6}: {n:,} requests (req/s per run {rps}); nginx {nginx_us:.1f} µs/request, "
              f"mtail {mtail_us:.1f} µs/request")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
