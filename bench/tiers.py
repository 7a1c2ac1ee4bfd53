"""Latency per second at each tier of one k6 run: nginx's own view from its access log
(`$request_time`: from reading the request to the last byte sent; `$upstream_response_time`: the
replica's part of it), beside the replicas' histograms and the client's summary, so a tail is
located by measurement: one the client has and nginx has not happened before nginx read the
request (the machine, the generator); one nginx has and the upstream has not is nginx's own."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.client_series import ClientSeries

# stack's log_format `surge`: addr [time] "request" status bytes request_time "upstream_addr"
# "upstream_status" "upstream_response_time" "upstream_header_time" (not read here)
LINE = re.compile(
    r'^\S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \d+ (?P<rt>[\d.]+) '
    r'"[^"]*" "[^"]*" "(?P<urt>[^"]*)"'
)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank); 0 when there are none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def _seconds(raw: str) -> float:
    """The upstream time of the last try ("0.002, 0.001" after a retry); '-' when none."""
    last = raw.rsplit(",", 1)[-1].strip()
    return float(last) if last and last != "-" else -1.0


def read(lines: Iterable[str], since: float, until: float) -> list[tuple[int, float, float]]:
    """(epoch second, request time, upstream time or -1) of record requests in [since, until]."""
    out = []
    for line in lines:
        match = LINE.match(line)
        if not match or (
            " /students/" not in match["request"] and " /bookings/" not in (match["request"])
        ):
            continue
        moment = datetime.datetime.fromisoformat(match["time"]).timestamp()
        if since <= moment <= until:
            out.append((int(moment), float(match["rt"]), _seconds(match["urt"])))
    return out


def nginx_view(log: Path, since: float, until: float) -> dict[str, Any]:
    """Whole-run percentiles and a per-second series of nginx's two times, in ms."""
    if not log.exists():
        return {}
    with log.open(errors="replace") as lines:
        rows = read(lines, since, until)
    if not rows:
        return {}
    start = rows[0][0]
    per_second: dict[int, tuple[list[float], list[float]]] = {}
    for second, request, upstream_s in rows:
        own, up = per_second.setdefault(second - start, ([], []))
        own.append(request * 1000)
        if upstream_s >= 0:
            up.append(upstream_s * 1000)
    series = []
    for t in sorted(per_second):
        own, up = (sorted(v) for v in per_second[t])
        series.append({
            "t": t, "requests": len(own),
            "request_p95_ms": quantile(own, 0.95), "request_p99_ms": quantile(own, 0.99),
            "upstream_p95_ms": quantile(up, 0.95), "upstream_p99_ms": quantile(up, 0.99),
        })  # fmt: skip
    every = sorted(r * 1000 for _, r, _ in rows)
    upstream = sorted(u * 1000 for _, _, u in rows if u >= 0)
    return {
        "requests": len(rows),
        "request_ms": {q: quantile(every, p) for q, p in (("p50", 0.5), ("p95", 0.95),
                                                          ("p99", 0.99), ("max", 1.0))},
        "upstream_ms": {q: quantile(upstream, p) for q, p in (("p50", 0.5), ("p95", 0.95),
                                                              ("p99", 0.99), ("max", 1.0))},
        "series": series,
    }  # fmt: skip


def attach_views(run: dict[str, Any], log: Path, client: ClientSeries, since: float) -> None:
    """After a k6 run begun at `since`: nginx's view of it (`tiers`) and k6's own per second
    (`client_series`), once both have flushed (nginx's log and k6's push, every second)."""
    time.sleep(2)
    until = time.time()
    run["tiers"] = nginx_view(log, since, until)
    run["client_series"] = client.series(since, until)
