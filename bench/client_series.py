"""k6's own latency per second, without per-request output: k6 pushes its request durations as
Prometheus native histograms (remote write, every second) into a throwaway Prometheus, which is
asked afterwards for the p95 and p99 of each second. k6's JSON output would cost k6 a large share
of a core at 3,000 VUs on the machine under test; aggregated histograms cost it next to nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from stack.launcher import http_ok
from stack.servers import HOST, free_port, start_child, stop_children

QUERY = "histogram_quantile({q}, sum(rate(k6_http_req_duration_seconds[2s])))"


class ClientSeries:
    """`with ClientSeries() as client:` k6 env in client.k6_env; client.series(since, until)."""

    def __init__(self, host: str = HOST) -> None:
        """host: the address it listens on, one k6 can reach (a namespace's gateway)."""
        self.port = free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.k6_env = {
            "K6_OUT": "experimental-prometheus-rw",
            "K6_PROMETHEUS_RW_SERVER_URL": f"{self.url}/api/v1/write",
            "K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM": "true",
            "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
        }

    def __enter__(self) -> ClientSeries:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: `make deps` installs it")
        self.dir = Path(tempfile.mkdtemp(prefix="surge-bench-prometheus-"))
        config = self.dir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\n")
        self.proc = start_child(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address={self.host}:{self.port}", "--web.enable-remote-write-receiver",
             "--enable-feature=native-histograms", "--log.level=warn"],
            lambda: http_ok(f"{self.url}/-/ready", timeout=1),
            "bench Prometheus",
        )  # fmt: skip
        return self

    def series(self, since: float, until: float) -> list[dict[str, float]]:
        """Per second from `since`: k6's p95 and p99 in ms (seconds with no requests left out)."""
        out: dict[float, dict[str, float]] = {}
        for name, q in (("p95_ms", 0.95), ("p99_ms", 0.99)):
            params = urllib.parse.urlencode(
                {"query": QUERY.format(q=q), "start": since, "end": until, "step": "1s"}
            )
            with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=30) as r:
                result = json.load(r)["data"]["result"]
            for stream in result:
                for t, value in stream["values"]:
                    if value not in ("NaN", "+Inf"):
                        out.setdefault(round(float(t) - since), {})[name] = float(value) * 1000
        return [{"t": t, **v} for t, v in sorted(out.items())]

    def __exit__(self, *exc: Any) -> None:
        stop_children([self.proc])
        shutil.rmtree(self.dir, ignore_errors=True)
        time.sleep(0.1)
