"""Writes surge's Grafana dashboards: monitoring/grafana/provisioning/dashboards/surge-*.json.

The JSON files are what Grafana loads (the provider in that folder points at it) and what is
committed; this script is how they are made, so that every panel gets the same datasource, ids,
layout and units. Edit the panels here, then:

    python monitoring/grafana/build_dashboards.py          # rewrite the JSON files
    python monitoring/grafana/build_dashboards.py --check  # exit 1 when they are out of date

Every metric name below was read from a live /metrics of the exporter that emits it (Debian's
node 1.5, nginx 0.11, redis 1.45 and postgres 0.11 exporters; k6 1.1's experimental-prometheus-rw
output with K6_PROMETHEUS_RW_TREND_STATS="p(50),p(95),p(99),avg,max"; surge's own are listed in
docs/metrics.md). tests/test_dashboards.py runs every query against a Prometheus scraping those
exporters and fails on any that returns nothing. cadvisor's container_* metrics exist only under
docker compose; their panels sit in a collapsed row that says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "provisioning" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
"""monitoring/grafana/provisioning/datasources/prometheus.yaml gives it this fixed uid."""
SCHEMA_VERSION = 39
COMPOSE_ONLY_ROW = "containers (docker compose only)"
"""Panels under a row with this title read cadvisor, which only runs under docker compose."""

RATE = "$__rate_interval"
"""Grafana's window for rate(): at least four scrape intervals (timeInterval in the datasource)."""


# ------------------------------------------------------------------------------------------
# building blocks


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }


Target = dict[str, Any]


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


GREEN = [(None, "green")]


def timeseries(
    title: str,
    *targets: Target,
    unit: str = "short",
    description: str = "",
    w: int = 8,
    h: int = 7,
    stack: bool = False,
    min_: float | None = 0,
    max_: float | None = None,
    table_legend: bool = False,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 25 if stack else 8,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "axisPlacement": "auto",
        },
        "thresholds": _thresholds(GREEN),
    }
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    legend: dict[str, Any] = {"showLegend": True, "placement": "bottom"}
    if table_legend:
        legend |= {"displayMode": "table", "calcs": ["mean", "max", "lastNotNull"]}
    else:
        legend |= {"displayMode": "list", "calcs": []}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": list(targets),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}},
        "_size": (w, h),
    }


def stat(
    title: str,
    *targets: Target,
    unit: str = "short",
    description: str = "",
    w: int = 4,
    h: int = 4,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: dict[int, tuple[str, str]] | None = None,
    decimals: int | None = None,
    text_mode: str = "auto",
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": _thresholds(thresholds or GREEN),
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if mappings:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    str(value): {"text": text, "color": color, "index": i}
                    for i, (value, (text, color)) in enumerate(sorted(mappings.items()))
                },
            }
        ]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": list(targets),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        },
        "_size": (w, h),
    }


def table(title: str, *targets: Target, description: str = "", w: int = 8, h: int = 5) -> dict:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [t | {"format": "table"} for t in targets],
        "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
            }
        ],
        "_size": (w, h),
    }


def query_variable(
    name: str,
    label: str,
    query: str,
    *,
    all_value: str = ".*",
    description: str = "",
) -> dict[str, Any]:
    """A multi-value variable listing a label's values, "All" selected (all_value as regex)."""
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: new replicas appear without a reload
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


@dataclass
class Board:
    """A dashboard being laid out: panels flow left to right on a 24-column grid."""

    uid: str
    title: str
    description: str
    variables: list[dict[str, Any]] = field(default_factory=list)
    refresh: str = "10s"
    panels: list[dict[str, Any]] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _line_h: int = 0
    _next_id: int = 1
    _collapsed: dict[str, Any] | None = None

    def _newline(self) -> None:
        if self._x:
            self._y += self._line_h
        self._x = 0
        self._line_h = 0

    def row(self, title: str, *, collapsed: bool = False) -> None:
        if self._collapsed is not None:
            raise ValueError("a collapsed row must be the last one (its panels live inside it)")
        self._newline()
        panel = {
            "type": "row",
            "title": title,
            "id": self._take_id(),
            "collapsed": collapsed,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
            "panels": [],
        }
        self.panels.append(panel)
        self._y += 1
        if collapsed:
            self._collapsed = panel

    def add(self, *panels: dict[str, Any]) -> None:
        for panel in panels:
            w, h = panel.pop("_size")
            if self._x + w > 24:
                self._newline()
            for i, t in enumerate(panel.get("targets", [])):
                t["refId"] = chr(ord("A") + i)
            grid = {"h": h, "w": w, "x": self._x, "y": self._y}
            placed = {"id": self._take_id(), "gridPos": grid} | panel
            self._x += w
            self._line_h = max(self._line_h, h)
            (self._collapsed["panels"] if self._collapsed else self.panels).append(placed)

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["surge"],
            "timezone": "browser",
            "editable": False,
            "graphTooltip": 1,  # shared crosshair: line load up against the system
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": self.refresh,
            "time": {"from": "now-15m", "to": "now"},
            "timepicker": {},
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "links": [
                {
                    "type": "dashboards",
                    "title": "surge dashboards",
                    "tags": ["surge"],
                    "asDropdown": True,
                    "includeVars": False,
                    "keepTime": True,
                    "icon": "external link",
                    "targetBlank": False,
                    "tooltip": "",
                    "url": "",
                }
            ],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


# ------------------------------------------------------------------------------------------
# surge-overview: load and system on one screen

API = 'job="api", instance=~"$instance"'
LOOKUP_ROUTES = 'route=~"/(students|bookings)/.*"'


def _share(metric: str, whole: str, part: str, by: str = "") -> str:
    """Share of the rate of `metric{whole}` that also matches `part`; 0, not "no data", when
    nothing matches `part` (a series that never occurred does not exist in Prometheus)."""
    agg = f"sum by ({by}) " if by else "sum"
    sep = ", " if whole else ""
    total = f"{agg}(rate({metric}{{{whole}}}[{RATE}]))"
    matching = f"{agg}(rate({metric}{{{whole}{sep}{part}}}[{RATE}]))"
    return f"({matching} or {total} * 0) / {total}"


def _requests_share(status: str) -> str:
    return _share("surge_http_requests_total", API, f'status=~"{status}"')


def overview() -> Board:
    b = Board(
        uid="surge-overview",
        title="surge / overview",
        description="Load and system side by side: the API replicas, nginx, Redis, Postgres, "
        "the host and k6. Details in the other surge dashboards (links, top right).",
        variables=[
            query_variable(
                "instance",
                "replica",
                'label_values(surge_build_info{job="api"}, instance)',
                description="API replicas (Prometheus job `api`).",
            )
        ],
        refresh="5s",
    )
    b.add(
        stat(
            "Requests/s",
            target(f"sum(rate(surge_http_requests_total{{{API}}}[{RATE}]))", "req/s"),
            unit="reqps",
            description="Answered by the selected replicas (surge_http_requests_total).",
        ),
        stat(
            "5xx share",
            target(_requests_share("5.."), "5xx"),
            unit="percentunit",
            decimals=2,
            thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
            description="Share of responses with status 5xx (503 when neither store answers).",
        ),
        stat(
            "p99 lookup latency",
            target(
                "histogram_quantile(0.99, sum by (le) (rate("
                f"surge_http_request_duration_seconds_bucket{{{API}, {LOOKUP_ROUTES}}}[{RATE}])))",
                "p99",
            ),
            unit="s",
            thresholds=[(None, "green"), (0.1, "orange"), (0.25, "red")],
            description="GET /students/{id} and /bookings/{id}, inside the replica. "
            "Targets: p99 <= 250 ms on the reference ramp.",
        ),
        stat(
            "Redis hit ratio",
            target(
                f'sum(rate(surge_lookups_total{{{API}, outcome="redis_hit"}}[{RATE}]))'
                f" / sum(rate(surge_lookups_total{{{API}}}[{RATE}]))",
                "hit ratio",
            ),
            unit="percentunit",
            decimals=1,
            thresholds=[(None, "red"), (0.5, "orange"), (0.9, "green")],
            description="Lookups served from Redis among all valid-id lookups.",
        ),
        stat(
            "Redis circuits open",
            target(f"sum(surge_redis_circuit_open{{{API}}})", "open"),
            mappings={0: ("all closed", "green")},
            thresholds=[(None, "green"), (1, "red")],
            description="Replicas that stopped asking Redis after repeated failures "
            "(surge_redis_circuit_open); they fall back to Postgres.",
        ),
        stat(
            "Targets up",
            target("sum by (job) (up)", "{{job}}"),
            thresholds=[(None, "red"), (1, "green")],
            text_mode="value_and_name",
            description="Scrape targets answering, per Prometheus job.",
        ),
    )

    b.row("surge API")
    b.add(
        timeseries(
            "Requests/s by route and status",
            target(
                f"sum by (route, status) (rate(surge_http_requests_total{{{API}}}[{RATE}]))",
                "{{route}} {{status}}",
            ),
            unit="reqps",
        ),
        timeseries(
            "Latency p50 / p95 / p99 by route",
            *[
                target(
                    f"histogram_quantile({q}, sum by (le, route) (rate("
                    f'surge_http_request_duration_seconds_bucket{{{API}, route!="/metrics"}}'
                    f"[{RATE}])))",
                    f"p{round(q * 100)} {{{{route}}}}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            unit="s",
            description="Inside the replica, from request to end of response "
            "(surge_http_request_duration_seconds). Prometheus's own /metrics scrapes left out.",
        ),
        timeseries(
            "Error share: 5xx and 4xx",
            target(_requests_share("5.."), "5xx"),
            target(_requests_share("4.."), "4xx"),
            unit="percentunit",
            description="5xx: surge failed (503: no store answered in time). 4xx: unknown or "
            "malformed ids (404, 400) and nginx's rate limit (429, counted at nginx only).",
        ),
    )
    b.add(
        timeseries(
            "Lookup outcomes/s",
            target(
                f"sum by (dataset, outcome) (rate(surge_lookups_total{{{API}}}[{RATE}]))",
                "{{dataset}} {{outcome}}",
            ),
            unit="ops",
            stack=True,
            description="redis_hit, fallback_hit (Postgres, written back), not_found, "
            "negative_cache_hit (unknown id remembered), unavailable (503).",
        ),
        timeseries(
            "Redis / Postgres call latency",
            *[
                target(
                    f"histogram_quantile({q}, sum by (le, store, operation) (rate("
                    f"surge_store_call_duration_seconds_bucket{{{API}}}[{RATE}])))",
                    f"p{round(q * 100)} {{{{store}}}} {{{{operation}}}}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            description="One successful store call, seen from the replica "
            "(surge_store_call_duration_seconds).",
        ),
        timeseries(
            "Store errors/s",
            target(
                f"sum by (store) (rate(surge_store_errors_total{{{API}}}[{RATE}]))", "{{store}}"
            ),
            unit="ops",
            description="Timeouts, refused connections, exhausted pools, query errors.",
        ),
    )
    b.add(
        timeseries(
            "Pools: connections in use, requests waiting",
            target(
                f'sum by (instance) (surge_redis_pool_connections{{{API}, state="in_use"}})',
                "redis in use {{instance}}",
            ),
            target(
                f'sum by (instance) (surge_postgres_pool_connections{{{API}, state="in_use"}})',
                "postgres in use {{instance}}",
            ),
            target(
                f"sum by (instance) (surge_postgres_pool_waiting{{{API}}})",
                "postgres waiting {{instance}}",
            ),
            description="Read at scrape time. Waiting > 0 means Postgres is the bottleneck; "
            "beyond SURGE_PG_MAX_WAITING requests get 503 at once.",
        ),
        timeseries(
            "Replica CPU",
            target(
                f"sum by (instance) (rate(process_cpu_seconds_total{{{API}}}[{RATE}]))",
                "{{instance}}",
            ),
            unit="percentunit",
            description="CPU time per second of each replica process: 100% is one core.",
        ),
        timeseries(
            "Replica memory (RSS)",
            target(f"process_resident_memory_bytes{{{API}}}", "{{instance}}"),
            unit="bytes",
        ),
    )
    b.add(
        timeseries(
            "Negative cache entries",
            target(f"sum by (instance) (surge_negative_cache_entries{{{API}}})", "{{instance}}"),
            w=8,
            h=5,
            description="Unknown ids each replica remembers (answered 404 without Postgres).",
        ),
        table(
            "Replicas",
            target(f"surge_build_info{{{API}}}", instant=True),
            w=16,
            h=5,
            description="One line per replica: its version and runtime (surge_build_info).",
        ),
    )

    b.row("nginx, Redis, Postgres, host")
    small = {"w": 6, "h": 6}
    b.add(
        timeseries(
            "nginx requests/s",
            target(f"sum(rate(nginx_http_requests_total[{RATE}]))", "requests/s"),
            unit="reqps",
            description="All requests nginx read (stub_status), including rejected ones.",
            **small,
        ),
        timeseries(
            "nginx connections",
            target("sum(nginx_connections_active)", "active"),
            target("sum(nginx_connections_waiting)", "idle keep-alive"),
            **small,
        ),
        timeseries(
            "Redis commands/s",
            target(f"sum(rate(redis_commands_processed_total[{RATE}]))", "commands/s"),
            unit="ops",
            **small,
        ),
        timeseries(
            "Redis memory",
            target("sum(redis_memory_used_bytes)", "used"),
            target("sum(redis_memory_used_rss_bytes)", "rss"),
            unit="bytes",
            **small,
        ),
    )
    b.add(
        timeseries(
            "Postgres connections by state",
            target("sum by (state) (pg_stat_activity_count)", "{{state}}"),
            stack=True,
            **small,
        ),
        timeseries(
            "Postgres transactions/s",
            target(f"sum(rate(pg_stat_database_xact_commit[{RATE}]))", "commits"),
            target(f"sum(rate(pg_stat_database_xact_rollback[{RATE}]))", "rollbacks"),
            unit="ops",
            **small,
        ),
        timeseries(
            "Host CPU",
            target(f'1 - avg(rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}]))', "busy"),
            target(f'avg(rate(node_cpu_seconds_total{{mode="iowait"}}[{RATE}]))', "iowait"),
            unit="percentunit",
            max_=1,
            description="All cores of the machine (node exporter); load generator included.",
            **small,
        ),
        timeseries(
            "Host memory",
            target("sum(node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes)", "used"),
            target("sum(node_memory_MemTotal_bytes)", "total"),
            unit="bytes",
            **small,
        ),
    )

    b.row("Load generator (k6, while a test pushes with -o experimental-prometheus-rw)")
    b.add(
        timeseries("k6 virtual users", target("sum(k6_vus)", "VUs"), **small),
        timeseries(
            "k6 requests/s by status",
            target(f"sum by (status) (rate(k6_http_reqs_total[{RATE}]))", "{{status}}"),
            unit="reqps",
            stack=True,
            **small,
        ),
        timeseries(
            "k6 latency (worst request name)",
            target("max(k6_http_req_duration_p95)", "p95"),
            target("max(k6_http_req_duration_p99)", "p99"),
            unit="s",
            description="As k6 measures it, nginx and network included.",
            **small,
        ),
        timeseries(
            "k6 failed requests share",
            target(_share("k6_http_reqs_total", "", 'expected_response="false"'), "failed"),
            unit="percentunit",
            description="Responses k6 counts as failed (http_req_failed: status >= 400 "
            "unless the script expects it).",
            **small,
        ),
    )
    return b


# ------------------------------------------------------------------------------------------
# surge-nginx

NGINX = 'instance=~"$instance"'
MTAIL = 'job="mtail", instance=~"$mtail"'
ANSWERS = "surge_nginx_responses_total"


def _nginx_made(status: str, by: str = "") -> str:
    """Rate of nginx's own answers with `status` (a regex); 0, not "no data", when there are
    none while mtail is scraped (its series appear with the first such answer)."""
    agg = f"sum by ({by}) " if by else "sum"
    made = f'{agg}(rate({ANSWERS}{{{MTAIL}, made_by="nginx", status=~"{status}"}}[{RATE}]))'
    return f"{made} or {agg}(rate({ANSWERS}{{{MTAIL}}}[{RATE}])) * 0"


def nginx() -> Board:
    b = Board(
        uid="surge-nginx",
        title="surge / nginx",
        description="nginx in front of the replicas: connections and requests from stub_status "
        "(nginx-prometheus-exporter); every answer by status, route and who made it, and "
        "request time, from nginx's access log (mtail, monitoring/mtail/nginx.mtail).",
        variables=[
            query_variable(
                "instance",
                "exporter",
                "label_values(nginx_up, instance)",
                description="nginx-prometheus-exporter targets (Prometheus job `nginx`).",
            ),
            query_variable(
                "mtail",
                "mtail",
                'label_values(up{job="mtail"}, instance)',
                description="mtail targets reading nginx's access log (Prometheus job `mtail`).",
            ),
        ],
    )
    b.add(
        stat(
            "nginx up",
            target(f"min(nginx_up{{{NGINX}}})", "up"),
            mappings={0: ("down", "red"), 1: ("up", "green")},
            w=6,
            description="The exporter could read stub_status (nginx_up).",
        ),
        stat(
            "Requests/s",
            target(f"sum(rate(nginx_http_requests_total{{{NGINX}}}[{RATE}]))", "req/s"),
            unit="reqps",
            w=6,
        ),
        stat(
            "Active connections",
            target(f"sum(nginx_connections_active{{{NGINX}}})", "active"),
            w=6,
        ),
        stat(
            "Dropped connections",
            target(
                f"sum(nginx_connections_accepted{{{NGINX}}})"
                f" - sum(nginx_connections_handled{{{NGINX}}})",
                "dropped",
            ),
            thresholds=[(None, "green"), (1, "red")],
            w=6,
            description="Accepted but not handled since nginx started: worker_connections or "
            "another resource limit was hit.",
        ),
    )
    b.add(
        timeseries(
            "Requests/s",
            target(
                f"sum by (instance) (rate(nginx_http_requests_total{{{NGINX}}}[{RATE}]))",
                "{{instance}}",
            ),
            unit="reqps",
            w=12,
            h=8,
        ),
        timeseries(
            "Connections by state",
            target(f"sum(nginx_connections_reading{{{NGINX}}})", "reading request"),
            target(f"sum(nginx_connections_writing{{{NGINX}}})", "writing response"),
            target(f"sum(nginx_connections_waiting{{{NGINX}}})", "idle keep-alive"),
            stack=True,
            w=12,
            h=8,
            description="Client connections; reading + writing + waiting = active. Writing "
            "includes requests waiting on a replica.",
        ),
    )
    b.add(
        timeseries(
            "New connections/s",
            target(f"sum(rate(nginx_connections_accepted{{{NGINX}}}[{RATE}]))", "accepted"),
            target(f"sum(rate(nginx_connections_handled{{{NGINX}}}[{RATE}]))", "handled"),
            unit="cps",
            w=12,
            h=8,
            description="Few new connections per request: clients keep connections alive.",
        ),
        timeseries(
            "Requests/s per open connection",
            target(
                f"sum(rate(nginx_http_requests_total{{{NGINX}}}[{RATE}]))"
                f" / sum(nginx_connections_active{{{NGINX}}})",
                "requests/s per connection",
            ),
            w=12,
            h=8,
            description="Requests per second per open client connection (the status listener's "
            "own scrape connection included).",
        ),
    )

    b.row("Answers, from the access log (mtail)")
    half = {"w": 12, "h": 8}
    b.add(
        timeseries(
            "Refused by nginx",
            target(_nginx_made("503"), "503 at the admission cap"),
            target(_nginx_made("429"), "429 at the per-IP rate limit"),
            unit="reqps",
            description="503: more record requests in flight than SURGE_NGINX_MAX_INFLIGHT; "
            "429: a client above SURGE_RATE_LIMIT_RATE plus its burst. nginx answers both "
            "itself, in microseconds, without asking a replica.",
            **half,
        ),
        timeseries(
            "nginx's own errors by status",
            target(_nginx_made("[45]..", "status"), "{{status}}"),
            unit="reqps",
            stack=True,
            description="Errors no replica made: 404/400 for paths and requests nginx rejects, "
            "502/504 when no replica answered (after the retries), 503/429 above. A replica's "
            "own errors (an unknown id, a store down) are in the next panel.",
            **half,
        ),
        timeseries(
            "Requests/s by status and route",
            target(
                f"sum by (route, status, made_by) (rate({ANSWERS}{{{MTAIL}}}[{RATE}]))",
                "{{route}} {{status}} ({{made_by}})",
            ),
            unit="reqps",
            stack=True,
            description="Every answer nginx sent: route students, bookings or other (never the "
            "path), made_by replica or nginx (a limit, its own error, a micro-cache hit).",
            **half,
        ),
        timeseries(
            "Request time by route (nginx)",
            *[
                target(
                    f"histogram_quantile({q}, sum by (route, le) (rate("
                    f"surge_nginx_request_duration_seconds_bucket{{{MTAIL}}}[{RATE}])))",
                    f"{{{{route}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            description="nginx's $request_time, from reading the request to its last byte "
            "sent (1 ms resolution: below 1 ms reads as 0-1 ms).",
            **half,
        ),
    )
    return b


# ------------------------------------------------------------------------------------------
# surge-redis

REDIS = 'instance=~"$instance"'


def redis() -> Board:
    b = Board(
        uid="surge-redis",
        title="surge / Redis",
        description="Redis holding the pre-rendered records, from redis_exporter.",
        variables=[
            query_variable(
                "instance",
                "exporter",
                "label_values(redis_up, instance)",
                description="redis_exporter targets (Prometheus job `redis`).",
            )
        ],
    )
    b.add(
        stat(
            "Redis up",
            target(f"min(redis_up{{{REDIS}}})", "up"),
            mappings={0: ("down", "red"), 1: ("up", "green")},
        ),
        stat("Uptime", target(f"max(redis_uptime_in_seconds{{{REDIS}}})", "uptime"), unit="s"),
        stat(
            "Commands/s",
            target(f"sum(rate(redis_commands_processed_total{{{REDIS}}}[{RATE}]))", "ops"),
            unit="ops",
        ),
        stat(
            "Keyspace hit ratio",
            target(
                f"sum(rate(redis_keyspace_hits_total{{{REDIS}}}[{RATE}])) / ("
                f"sum(rate(redis_keyspace_hits_total{{{REDIS}}}[{RATE}])) + "
                f"sum(rate(redis_keyspace_misses_total{{{REDIS}}}[{RATE}])))",
                "hits",
            ),
            unit="percentunit",
            decimals=1,
            thresholds=[(None, "red"), (0.5, "orange"), (0.9, "green")],
            description="Key lookups that found their key. A miss sends surge to Postgres.",
        ),
        stat(
            "Memory used", target(f"sum(redis_memory_used_bytes{{{REDIS}}})", "used"), unit="bytes"
        ),
        stat("Keys", target(f"sum(redis_db_keys{{{REDIS}}})", "keys")),
    )
    b.add(
        timeseries(
            "Commands/s",
            target(
                f"sum by (instance) (rate(redis_commands_processed_total{{{REDIS}}}[{RATE}]))",
                "{{instance}}",
            ),
            unit="ops",
        ),
        timeseries(
            "Commands/s by command (top 8)",
            target(
                f"topk(8, sum by (cmd) (rate(redis_commands_total{{{REDIS}}}[{RATE}])))",
                "{{cmd}}",
            ),
            unit="ops",
            stack=True,
        ),
        timeseries(
            "Server-side latency by command",
            target(
                f"sum by (cmd) (rate(redis_commands_duration_seconds_total{{{REDIS}}}[{RATE}]))"
                f" / sum by (cmd) (rate(redis_commands_total{{{REDIS}}}[{RATE}]))",
                "avg {{cmd}}",
            ),
            target(
                f'max by (cmd) (redis_latency_percentiles_usec{{{REDIS}, quantile="99", '
                'cmd=~"hget|hset|get|set|ping"}) / 1e6',
                "p99 {{cmd}} (since start)",
            ),
            unit="s",
            description="Time Redis spent executing, not counting the network. avg: over the "
            "window; p99: Redis's own percentile since it started (Redis 7 LATENCYSTATS).",
        ),
    )
    b.add(
        timeseries(
            "Keyspace hits / misses per second",
            target(f"sum(rate(redis_keyspace_hits_total{{{REDIS}}}[{RATE}]))", "hits"),
            target(f"sum(rate(redis_keyspace_misses_total{{{REDIS}}}[{RATE}]))", "misses"),
            unit="ops",
        ),
        timeseries(
            "Memory",
            target(f"sum(redis_memory_used_bytes{{{REDIS}}})", "used"),
            target(f"sum(redis_memory_used_rss_bytes{{{REDIS}}})", "rss"),
            target(f"sum(redis_memory_used_peak_bytes{{{REDIS}}})", "peak"),
            unit="bytes",
        ),
        timeseries(
            "Clients",
            target(f"sum(redis_connected_clients{{{REDIS}}})", "connected"),
            target(f"sum(redis_blocked_clients{{{REDIS}}})", "blocked"),
            target(
                f"sum(rate(redis_rejected_connections_total{{{REDIS}}}[{RATE}]))",
                "rejected/s",
            ),
            description="Each replica keeps up to SURGE_REDIS_POOL_SIZE connections.",
        ),
    )
    b.add(
        timeseries(
            "Keys",
            target(f"sum by (db) (redis_db_keys{{{REDIS}}}) > 0", "{{db}}"),
            target(f"sum(redis_db_keys{{{REDIS}}})", "all databases"),
            description="Records are grouped ~100 per hash key; an empty Redis is refilled by "
            "read-through (fallback_hit) or the seeder.",
        ),
        timeseries(
            "Memory headroom",
            target(
                f"sum(redis_memory_max_bytes{{{REDIS}}}) - sum(redis_memory_used_bytes{{{REDIS}}})",
                "maxmemory - used",
            ),
            unit="bytes",
            min_=None,
            description="Room left before Redis refuses writes (maxmemory with noeviction: "
            "SURGE_REDIS_MAXMEMORY). A reseed fills a second version beside the live one, so "
            "keep about the dataset's size free. Negative: no maxmemory set.",
        ),
        timeseries(
            "Write-backs Redis refused",
            target(
                f'sum(rate(surge_redis_refused_writes_total{{job="api"}}[{RATE}]))', "refused/s"
            ),
            unit="ops",
            description="Read-through write-backs Redis refused because it is full. They cost "
            "the request nothing; the record stays a miss (Postgres) until Redis has room.",
        ),
        timeseries(
            "Evicted / expired keys per second",
            target(f"sum(rate(redis_evicted_keys_total{{{REDIS}}}[{RATE}]))", "evicted"),
            target(f"sum(rate(redis_expired_keys_total{{{REDIS}}}[{RATE}]))", "expired"),
            unit="ops",
            description="Evictions mean maxmemory was reached: lookups will fall back.",
        ),
        timeseries(
            "Redis CPU",
            target(
                f"sum(rate(redis_cpu_sys_seconds_total{{{REDIS}}}[{RATE}]))"
                f" + sum(rate(redis_cpu_user_seconds_total{{{REDIS}}}[{RATE}]))",
                "CPU (100% = one core)",
            ),
            unit="percentunit",
            description="Redis runs commands on one thread: near 100% it is the bottleneck.",
        ),
    )
    b.add(
        timeseries(
            "Network bytes/s",
            target(f"sum(rate(redis_net_input_bytes_total{{{REDIS}}}[{RATE}]))", "in"),
            target(f"sum(rate(redis_net_output_bytes_total{{{REDIS}}}[{RATE}]))", "out"),
            unit="Bps",
            w=12,
        ),
        timeseries(
            "Memory fragmentation ratio",
            target(f"max(redis_mem_fragmentation_ratio{{{REDIS}}})", "rss / used"),
            min_=None,
            w=12,
        ),
    )
    return b


# ------------------------------------------------------------------------------------------
# surge-postgres

PG = 'instance=~"$instance"'
PGDB = 'instance=~"$instance", datname=~"$datname"'


def postgres() -> Board:
    b = Board(
        uid="surge-postgres",
        title="surge / Postgres",
        description="Postgres, the source of truth and the fallback on a Redis miss, from "
        "postgres_exporter.",
        variables=[
            query_variable(
                "instance",
                "exporter",
                "label_values(pg_up, instance)",
                description="postgres_exporter targets (Prometheus job `postgres`).",
            ),
            query_variable(
                "datname",
                "database",
                'label_values(pg_stat_database_numbackends{datname!=""}, datname)',
                all_value=".+",  # not the datname="" row (shared catalogs)
            ),
        ],
    )
    b.add(
        stat(
            "Postgres up",
            target(f"min(pg_up{{{PG}}})", "up"),
            mappings={0: ("down", "red"), 1: ("up", "green")},
        ),
        stat(
            "Connections",
            target(f"sum(pg_stat_database_numbackends{{{PGDB}}})", "backends"),
            description="Backends connected to the selected databases.",
        ),
        stat(
            "Max connections",
            target(f"max(pg_settings_max_connections{{{PG}}})", "max_connections"),
        ),
        stat(
            "Transactions/s",
            target(f"sum(rate(pg_stat_database_xact_commit{{{PGDB}}}[{RATE}]))", "commits/s"),
            unit="ops",
        ),
        stat(
            "Buffer cache hit ratio",
            target(
                f"sum(rate(pg_stat_database_blks_hit{{{PGDB}}}[{RATE}])) / ("
                f"sum(rate(pg_stat_database_blks_hit{{{PGDB}}}[{RATE}])) + "
                f"sum(rate(pg_stat_database_blks_read{{{PGDB}}}[{RATE}])))",
                "hit",
            ),
            unit="percentunit",
            decimals=1,
            thresholds=[(None, "red"), (0.9, "orange"), (0.99, "green")],
        ),
        stat(
            "Database size",
            target(f"sum(pg_database_size_bytes{{{PGDB}}})", "size"),
            unit="bytes",
        ),
    )
    b.add(
        timeseries(
            "Connections by state",
            target(
                f"sum by (datname, state) (pg_stat_activity_count{{{PGDB}}}) > 0",
                "{{datname}} {{state}}",
            ),
            target(f"sum(pg_stat_database_numbackends{{{PGDB}}})", "all backends"),
            description="From pg_stat_activity. Each replica's pool holds up to "
            "SURGE_PG_POOL_MAX connections.",
        ),
        timeseries(
            "Transactions/s",
            target(
                f"sum by (datname) (rate(pg_stat_database_xact_commit{{{PGDB}}}[{RATE}]))",
                "commits {{datname}}",
            ),
            target(
                f"sum by (datname) (rate(pg_stat_database_xact_rollback{{{PGDB}}}[{RATE}]))",
                "rollbacks {{datname}}",
            ),
            unit="ops",
        ),
        timeseries(
            "Rows/s",
            *[
                target(
                    f"sum(rate(pg_stat_database_tup_{kind}{{{PGDB}}}[{RATE}]))",
                    kind,
                )
                for kind in ("fetched", "returned", "inserted", "updated", "deleted")
            ],
            unit="ops",
            description="fetched: by index; returned: scanned. The API reads by primary key.",
        ),
    )
    b.add(
        timeseries(
            "Blocks/s: buffer cache vs read",
            target(f"sum(rate(pg_stat_database_blks_hit{{{PGDB}}}[{RATE}]))", "hit (cache)"),
            target(f"sum(rate(pg_stat_database_blks_read{{{PGDB}}}[{RATE}]))", "read (disk/OS)"),
            unit="ops",
        ),
        timeseries(
            "Locks by mode",
            target(f"sum by (mode) (pg_locks_count{{{PGDB}}})", "{{mode}}"),
            stack=True,
        ),
        timeseries(
            "Longest open transaction",
            target(f"max by (datname) (pg_stat_activity_max_tx_duration{{{PGDB}}})", "{{datname}}"),
            unit="s",
        ),
    )
    b.add(
        timeseries(
            "Database size",
            target(f"sum by (datname) (pg_database_size_bytes{{{PGDB}}})", "{{datname}}"),
            unit="bytes",
        ),
        timeseries(
            "Temp files, deadlocks, conflicts",
            target(f"sum(rate(pg_stat_database_temp_bytes{{{PGDB}}}[{RATE}]))", "temp bytes/s"),
            target(f"sum(rate(pg_stat_database_deadlocks{{{PGDB}}}[{RATE}]))", "deadlocks/s"),
            target(f"sum(rate(pg_stat_database_conflicts{{{PGDB}}}[{RATE}]))", "conflicts/s"),
            description="Temp files: a sort or hash did not fit in work_mem.",
        ),
        timeseries(
            "Checkpoints and background writes",
            target(
                f"sum(rate(pg_stat_bgwriter_checkpoints_timed_total{{{PG}}}[{RATE}]))",
                "timed checkpoints/s",
            ),
            target(
                f"sum(rate(pg_stat_bgwriter_checkpoints_req_total{{{PG}}}[{RATE}]))",
                "requested checkpoints/s",
            ),
            target(
                f"sum(rate(pg_stat_bgwriter_buffers_alloc_total{{{PG}}}[{RATE}]))",
                "buffers allocated/s",
            ),
            description="Requested checkpoints come from WAL filling up (bulk loads, seeding).",
        ),
    )
    return b


# ------------------------------------------------------------------------------------------
# surge-host

NODE = 'instance=~"$instance"'
NET = f'{NODE}, device!~"lo|veth.*|docker.*|br-.*"'
DISK = f'{NODE}, device!~"loop.*|ram.*|zram.*|fd.*|sr.*"'
FS = f'{NODE}, fstype!~"tmpfs|ramfs|squashfs|nsfs|overlay|fuse.*"'
CONTAINER = 'name=~".+"'


def host() -> Board:
    b = Board(
        uid="surge-host",
        title="surge / host and containers",
        description="The machine everything runs on (node exporter): on a 2-core box the load "
        "generator competes with nginx, the replicas, Redis and Postgres for the same CPUs. "
        "Per-container panels (cadvisor) exist under docker compose only.",
        variables=[
            query_variable(
                "instance",
                "host",
                "label_values(node_uname_info, instance)",
                description="node exporter targets (Prometheus job `node`).",
            )
        ],
    )
    cpu_count = f"count(count by (cpu) (node_cpu_seconds_total{{{NODE}}}))"
    b.add(
        stat(
            "CPU busy",
            target(f'1 - avg(rate(node_cpu_seconds_total{{{NODE}, mode="idle"}}[{RATE}]))'),
            unit="percentunit",
            decimals=1,
            thresholds=[(None, "green"), (0.7, "orange"), (0.9, "red")],
        ),
        stat("CPU cores", target(cpu_count, "cores")),
        stat(
            "Load (1 min) per core",
            target(f"sum(node_load1{{{NODE}}}) / {cpu_count}", "load1 / cores"),
            decimals=2,
            thresholds=[(None, "green"), (1, "orange"), (2, "red")],
        ),
        stat(
            "Memory used",
            target(
                f"1 - sum(node_memory_MemAvailable_bytes{{{NODE}}})"
                f" / sum(node_memory_MemTotal_bytes{{{NODE}}})",
                "used",
            ),
            unit="percentunit",
            decimals=1,
            thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")],
        ),
        stat(
            "Root filesystem used",
            target(
                f'1 - sum(node_filesystem_avail_bytes{{{NODE}, mountpoint="/"}})'
                f' / sum(node_filesystem_size_bytes{{{NODE}, mountpoint="/"}})',
                "used",
            ),
            unit="percentunit",
            decimals=1,
            thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")],
        ),
        stat(
            "Uptime",
            target(f"time() - max(node_boot_time_seconds{{{NODE}}})", "uptime"),
            unit="s",
        ),
    )
    b.add(
        timeseries(
            "CPU by mode",
            target(
                f'sum by (mode) (rate(node_cpu_seconds_total{{{NODE}, mode!="idle"}}[{RATE}]))'
                f" / scalar({cpu_count})",
                "{{mode}}",
            ),
            unit="percentunit",
            stack=True,
            max_=1,
            description="Share of all cores. steal: the hypervisor took the CPU away.",
        ),
        timeseries(
            "Load average",
            target(f"sum(node_load1{{{NODE}}})", "1 min"),
            target(f"sum(node_load5{{{NODE}}})", "5 min"),
            target(f"sum(node_load15{{{NODE}}})", "15 min"),
            target(cpu_count, "cores"),
            description="Runnable (and uninterruptible) tasks; above the core count work waits.",
        ),
        timeseries(
            "Memory",
            target(
                f"sum(node_memory_MemTotal_bytes{{{NODE}}})"
                f" - sum(node_memory_MemAvailable_bytes{{{NODE}}})",
                "used",
            ),
            target(
                f"sum(node_memory_Cached_bytes{{{NODE}}})"
                f" + sum(node_memory_Buffers_bytes{{{NODE}}})",
                "page cache + buffers",
            ),
            target(f"sum(node_memory_MemAvailable_bytes{{{NODE}}})", "available"),
            target(
                f"sum(node_memory_SwapTotal_bytes{{{NODE}}})"
                f" - sum(node_memory_SwapFree_bytes{{{NODE}}})",
                "swap used",
            ),
            unit="bytes",
        ),
    )
    b.add(
        timeseries(
            "Network bytes/s",
            target(
                f"sum by (device) (rate(node_network_receive_bytes_total{{{NET}}}[{RATE}]))",
                "in {{device}}",
            ),
            target(
                f"sum by (device) (rate(node_network_transmit_bytes_total{{{NET}}}[{RATE}]))",
                "out {{device}}",
            ),
            unit="Bps",
            description="Physical interfaces; loopback (where local load tests run) left out.",
        ),
        timeseries(
            "TCP connections",
            target(f"sum(node_netstat_Tcp_CurrEstab{{{NODE}}})", "established"),
            target(f"sum(node_sockstat_TCP_tw{{{NODE}}})", "time-wait"),
            target(f"sum(node_sockstat_TCP_alloc{{{NODE}}})", "allocated sockets"),
            description="Loopback included. A load test that opens a connection per request "
            "piles up time-wait sockets and can run out of ephemeral ports.",
        ),
        timeseries(
            "Network errors and drops/s",
            target(
                f"sum(rate(node_network_receive_errs_total{{{NET}}}[{RATE}]))"
                f" + sum(rate(node_network_transmit_errs_total{{{NET}}}[{RATE}]))",
                "errors",
            ),
            target(
                f"sum(rate(node_network_receive_drop_total{{{NET}}}[{RATE}]))"
                f" + sum(rate(node_network_transmit_drop_total{{{NET}}}[{RATE}]))",
                "drops",
            ),
            target(
                f"sum(rate(node_netstat_TcpExt_ListenOverflows{{{NODE}}}[{RATE}]))",
                "listen queue overflows",
            ),
            unit="ops",
            description="Listen queue overflows: a server's accept backlog was full.",
        ),
    )
    b.add(
        timeseries(
            "Disk bytes/s",
            target(
                f"sum by (device) (rate(node_disk_read_bytes_total{{{DISK}}}[{RATE}]))",
                "read {{device}}",
            ),
            target(
                f"sum by (device) (rate(node_disk_written_bytes_total{{{DISK}}}[{RATE}]))",
                "written {{device}}",
            ),
            unit="Bps",
        ),
        timeseries(
            "Disk busy",
            target(
                f"sum by (device) (rate(node_disk_io_time_seconds_total{{{DISK}}}[{RATE}]))",
                "{{device}}",
            ),
            unit="percentunit",
            description="Time the device had I/O in flight (100% need not mean saturated on SSDs).",
        ),
        timeseries(
            "Filesystem used",
            target(
                f"1 - sum by (mountpoint) (node_filesystem_avail_bytes{{{FS}}})"
                f" / sum by (mountpoint) (node_filesystem_size_bytes{{{FS}}})",
                "{{mountpoint}}",
            ),
            unit="percentunit",
            max_=1,
        ),
    )
    b.add(
        timeseries(
            "Context switches and interrupts/s",
            target(f"sum(rate(node_context_switches_total{{{NODE}}}[{RATE}]))", "switches"),
            target(f"sum(rate(node_intr_total{{{NODE}}}[{RATE}]))", "interrupts"),
            unit="ops",
            w=12,
        ),
        timeseries(
            "Processes and file descriptors",
            target(f"sum(node_procs_running{{{NODE}}})", "running"),
            target(f"sum(node_procs_blocked{{{NODE}}})", "blocked on I/O"),
            target(f"sum(node_filefd_allocated{{{NODE}}})", "open files"),
            w=12,
        ),
    )

    b.row(COMPOSE_ONLY_ROW, collapsed=True)
    b.add(
        timeseries(
            "Container CPU",
            target(
                f"sum by (name) (rate(container_cpu_usage_seconds_total{{{CONTAINER}}}[{RATE}]))",
                "{{name}}",
            ),
            unit="percentunit",
            stack=True,
            description="cadvisor (compose only). 100% is one core.",
        ),
        timeseries(
            "Container memory (working set)",
            target(
                f"sum by (name) (container_memory_working_set_bytes{{{CONTAINER}}})", "{{name}}"
            ),
            unit="bytes",
            description="cadvisor (compose only). What the kernel counts against a limit.",
        ),
        timeseries(
            "Container network bytes/s",
            target(
                f"sum by (name) (rate(container_network_receive_bytes_total{{{CONTAINER}}}"
                f"[{RATE}]))",
                "in {{name}}",
            ),
            target(
                f"sum by (name) (rate(container_network_transmit_bytes_total{{{CONTAINER}}}"
                f"[{RATE}]))",
                "out {{name}}",
            ),
            unit="Bps",
            description="cadvisor (compose only).",
        ),
    )
    return b


# ------------------------------------------------------------------------------------------
# surge-k6

K6_HTTP = 'scenario=~"$scenario", name=~"$name"'
K6_SCENARIO = 'scenario=~"$scenario"'


def k6() -> Board:
    b = Board(
        uid="surge-k6",
        title="surge / k6 load test",
        description="k6's own measurements, pushed with `k6 run -o experimental-prometheus-rw` "
        "(K6_PROMETHEUS_RW_SERVER_URL=http://127.0.0.1:9090/api/v1/write, "
        'K6_PROMETHEUS_RW_TREND_STATS="p(50),p(95),p(99),avg,max"). Trend statistics are '
        "computed by k6 per tag set; the panels show the worst tag set.",
        variables=[
            query_variable("scenario", "scenario", "label_values(k6_http_reqs_total, scenario)"),
            query_variable(
                "name",
                "request name",
                "label_values(k6_http_reqs_total, name)",
                description="k6's `name` tag: the URL unless the script names the request.",
            ),
        ],
        refresh="5s",
    )
    b.add(
        stat("Virtual users", target("sum(k6_vus)", "VUs")),
        stat(
            "Requests/s",
            target(f"sum(rate(k6_http_reqs_total{{{K6_HTTP}}}[{RATE}]))", "req/s"),
            unit="reqps",
        ),
        stat(
            "Failed requests",
            target(_share("k6_http_reqs_total", K6_HTTP, 'expected_response="false"'), "failed"),
            unit="percentunit",
            decimals=2,
            thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
        ),
        stat(
            "p95 latency",
            target(f"max(k6_http_req_duration_p95{{{K6_HTTP}}})", "p95"),
            unit="s",
            thresholds=[(None, "green"), (0.1, "orange"), (0.25, "red")],
        ),
        stat(
            "p99 latency",
            target(f"max(k6_http_req_duration_p99{{{K6_HTTP}}})", "p99"),
            unit="s",
            thresholds=[(None, "green"), (0.25, "orange"), (0.5, "red")],
        ),
        stat(
            "Checks passed",
            target(f"min(k6_checks_rate{{{K6_SCENARIO}}})", "worst check"),
            unit="percentunit",
            decimals=2,
            thresholds=[(None, "red"), (0.99, "orange"), (1, "green")],
            description="The check with the lowest pass rate.",
        ),
    )
    b.add(
        timeseries(
            "Virtual users",
            target("sum(k6_vus)", "active"),
            target("sum(k6_vus_max)", "allocated"),
        ),
        timeseries(
            "Requests/s by status",
            target(
                f"sum by (status) (rate(k6_http_reqs_total{{{K6_HTTP}}}[{RATE}]))", "{{status}}"
            ),
            unit="reqps",
            stack=True,
        ),
        timeseries(
            "Requests/s by scenario and name",
            target(
                f"sum by (scenario, name) (rate(k6_http_reqs_total{{{K6_HTTP}}}[{RATE}]))",
                "{{scenario}} {{name}}",
            ),
            unit="reqps",
        ),
    )
    b.add(
        timeseries(
            "Request duration p50 / p95 / p99 by name",
            *[
                target(
                    f"max by (name) (k6_http_req_duration_{stat_}{{{K6_HTTP}}})",
                    f"{stat_} {{{{name}}}}",
                )
                for stat_ in ("p50", "p95", "p99")
            ],
            unit="s",
            w=12,
            h=8,
            description="http_req_duration: sending + waiting + receiving.",
        ),
        timeseries(
            "Request duration avg / max",
            target(f"max(k6_http_req_duration_avg{{{K6_HTTP}}})", "avg"),
            target(f"max(k6_http_req_duration_max{{{K6_HTTP}}})", "max"),
            unit="s",
            w=12,
            h=8,
        ),
    )
    b.add(
        timeseries(
            "Where the time goes (p95)",
            *[
                target(f"max(k6_http_req_{phase}_p95{{{K6_HTTP}}})", phase)
                for phase in ("blocked", "connecting", "sending", "waiting", "receiving")
            ],
            unit="s",
            description="blocked: waiting for a free connection; waiting: time to first byte.",
        ),
        timeseries(
            "Failed share by name",
            target(
                _share("k6_http_reqs_total", K6_HTTP, 'expected_response="false"', by="name"),
                "{{name}}",
            ),
            unit="percentunit",
        ),
        timeseries(
            "http_req_failed by name and status",
            target(
                f"max by (name, status) (k6_http_req_failed_rate{{{K6_HTTP}}})",
                "{{name}} {{status}}",
            ),
            unit="percentunit",
            max_=1,
            description="k6's own Rate metric per tag set: which statuses it counted as failed.",
        ),
    )
    b.add(
        timeseries(
            "Iterations/s",
            target(
                f"sum by (scenario) (rate(k6_iterations_total{{{K6_SCENARIO}}}[{RATE}]))",
                "{{scenario}}",
            ),
            unit="ops",
        ),
        timeseries(
            "Iteration duration",
            target(f"max(k6_iteration_duration_p95{{{K6_SCENARIO}}})", "p95"),
            target(f"max(k6_iteration_duration_avg{{{K6_SCENARIO}}})", "avg"),
            unit="s",
            description="One pass of the default function, think time included.",
        ),
        timeseries(
            "Checks pass rate",
            target(f"min by (check) (k6_checks_rate{{{K6_SCENARIO}}})", "{{check}}"),
            unit="percentunit",
            max_=1,
        ),
    )
    b.add(
        timeseries(
            "Data received / sent",
            target(f"sum(rate(k6_data_received_total{{{K6_SCENARIO}}}[{RATE}]))", "received"),
            target(f"sum(rate(k6_data_sent_total{{{K6_SCENARIO}}}[{RATE}]))", "sent"),
            unit="Bps",
            w=24,
            h=6,
        ),
    )
    return b


BOARDS = (overview, nginx, redis, postgres, host, k6)


def build() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for make in BOARDS:
        board = make().to_json()
        out[f"{board['uid']}.json"] = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 on changes")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
