"""k6 runs of the bench: the binary (one on PATH first), its Go collector settings, one
scenario's summary and a per-second timeline sampled beside it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import report_render
from bench.resources import Periodic, scrape
from stack.servers import (
    find_k6,
    free_port,
)

ROOT = Path(__file__).resolve().parent.parent
K6 = find_k6()


def _half_the_memory() -> str:
    total_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )  # fmt: skip
    return f"{total_kib // 2048}MiB"


# k6's Go collector, left to its default, takes both cores for about a second every ~13 s at
# 3,000 VUs (CPU sampled per second): the server under test stalls behind the load generator.
# Off until the heap reaches GOMEMLIMIT: k6 allocates ~75 MB/s there, so half of this machine's
# memory lasts the runs here (a 6 GiB limit was reached 68 s into the spike, and showed).
K6_GO_ENV = {"GOGC": "off", "GOMEMLIMIT": _half_the_memory()}


def k6(
    script: str,
    url: str,
    env: Mapping[str, str],
    timeout: int,
    work: Path,
    replica_ports: Mapping[str, int],
) -> dict[str, Any]:
    """One k6 scenario: its summary (failed, percentiles, req/s) and a per-second timeline.

    The timeline is sampled, not taken from k6's per-request output (at 3,000 VUs that output
    costs k6 a large share of a core on the machine under test): VUs from k6's REST API, req/s
    and p95 from the replicas' own request counters and latency histograms."""
    api_port = free_port()
    with Timeline(replica_ports, api_port) as line:
        run = k6_run(
            script, url, {**os.environ, **env}, timeout, work,
            k6_args=("--address", f"127.0.0.1:{api_port}"),
        )  # fmt: skip
    return {"run": run, "timeline": line.points}


def k6_run(
    script: str,
    url: str,
    env: Mapping[str, str],
    timeout: int,
    work: Path,
    *,
    prefix: Sequence[str] = (),
    k6_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run k6/<script>.js against url with env (the whole environment, plus K6_GO_ENV),
    under `prefix` (e.g. `ip netns exec HOST`): the figures of its summary."""
    work.mkdir(parents=True, exist_ok=True)
    summary = work / f"{script}-{len(list(work.glob('*-summary.json')))}-summary.json"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # one open file per VU connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cmd = [*prefix, str(K6), "run", "--no-usage-report", "--quiet", *k6_args,
           "--summary-trend-stats", "avg,med,p(95),p(99),max",
           "--summary-export", str(summary), f"k6/{script}.js"]  # fmt: skip
    k6_env = {**env, **K6_GO_ENV, "BASE_URL": url}
    done = subprocess.run(
        cmd, cwd=ROOT, env=k6_env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode not in (0, 99):  # 99: a threshold crossed, which the report shows
        raise RuntimeError(f"k6 {script} exited {done.returncode}:\n{done.stderr[-2000:]}")
    metrics = json.loads(summary.read_text())["metrics"]
    duration, reqs = metrics["http_req_duration"], metrics["http_reqs"]
    failed = metrics.get("http_req_failed", {})
    return {
        "rps": reqs["rate"],
        "requests": reqs["count"],
        "errors": failed.get("passes", 0),  # a Rate: "passes" are the failed requests
        "p50_ms": duration["med"],
        "p95_ms": duration["p(95)"],
        "p99_ms": duration["p(99)"],
        "max_ms": duration["max"],
        "thresholds_passed": done.returncode == 0,
    }


def student_histogram(samples: Mapping[str, float]) -> dict[float, float]:
    """Cumulative counts per upper bound of /students/{id}'s latency histogram, from scrape()."""
    out: dict[float, float] = {}
    for key, value in samples.items():
        if key.startswith("surge_http_request_duration_seconds_bucket{") and (
            'route="/students/{id}"' in key
        ):
            match = re.search(r'le="([^"]+)"', key)
            if match:
                le = float(match[1])
                out[le] = out.get(le, 0.0) + value
    return out


class Timeline(Periodic):
    """Once a second: k6's VUs (REST API) and the replicas' req/s and p95 (their histograms)."""

    def __init__(self, replica_ports: Mapping[str, int], k6_port: int) -> None:
        self.ports = dict(replica_ports)
        self.k6_port = k6_port
        self.points: list[dict[str, float]] = []
        self.start = self.previous_t = time.monotonic()
        self.previous: dict[float, float] | None = None  # the histograms at the last tick

    def _state(self) -> dict[float, float]:
        total: dict[float, float] = {}
        for port in self.ports.values():
            for le, count in student_histogram(scrape(port)).items():
                total[le] = total.get(le, 0.0) + count
        return total

    def _vus(self) -> float:
        try:
            url = f"http://127.0.0.1:{self.k6_port}/v1/status"
            with urllib.request.urlopen(url, timeout=0.5) as r:
                return float(json.load(r)["data"]["attributes"]["vus"])
        except (OSError, ValueError, KeyError):
            return 0.0

    def tick(self) -> None:
        now, state = time.monotonic(), self._state()
        if self.previous is not None:
            delta = {le: state.get(le, 0.0) - self.previous.get(le, 0.0) for le in state}
            count = delta.get(float("inf"), 0.0)
            self.points.append({
                "t": round(now - self.start, 1),
                "rps": count / max(now - self.previous_t, 1e-6),
                "p95_ms": report_render.histogram_quantile(delta, 0.95) * 1000,
                "vus": self._vus(),
            })  # fmt: skip
        self.previous, self.previous_t = state, now
