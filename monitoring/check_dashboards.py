"""Check surge's Grafana dashboards against a live Prometheus: does every panel show something?

Grafana does not need to run. Each panel query is expanded the way Grafana would (template
variables at "All", $__rate_interval and friends), sent to Prometheus as a range query over the
dashboard's default time range, and counted as empty when no series has a number in it (NaN,
what histogram_quantile gives without traffic, is drawn as nothing too). An empty panel, or a
query Prometheus rejects, is a defect: a metric name that does not exist, a label that is never
set, a join that never matches.

    python monitoring/check_dashboards.py --prometheus http://127.0.0.1:9090
    python monitoring/check_dashboards.py --skip-compose-only     # without docker compose

Run it while (or shortly after) a load test pushes k6's metrics: k6's series exist only then.
Exit status: 0 when every query returned data, 1 otherwise (each empty one is listed).

Also used by tests/e2e/test_dashboards.py (structure, PromQL syntax, and the live check).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

DASHBOARD_DIR = Path(__file__).resolve().parent / "grafana" / "provisioning" / "dashboards"
DATASOURCE_UID = "prometheus"
RATE_INTERVAL = "20s"
"""Grafana's $__rate_interval with the datasource's timeInterval of 5 s: four scrape intervals."""
COMPOSE_ONLY_MARK = "(docker compose only)"
"""Rows whose title contains this hold panels with data only under docker compose (cadvisor)."""

Dashboard = Mapping[str, Any]


class Missing(NamedTuple):
    """A query that would leave (part of) a panel empty."""

    dashboard: str
    panel: str
    expr: str


@dataclass(frozen=True)
class QueryResult:
    dashboard: str
    panel: str
    expr: str
    """As sent to Prometheus (variables expanded)."""
    series: int
    """Series with at least one number in the time range."""
    error: str = ""

    @property
    def has_data(self) -> bool:
        return self.series > 0 and not self.error


# ------------------------------------------------------------------------------------------
# reading dashboards


def load_dashboards(directory: Path | str = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """Every *.json in directory (the provider's folder), by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(Path(directory).glob("*.json"))
    }


def iter_panels(dashboard: Dashboard) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(panel, row it sits under or None), rows included, panels of collapsed rows too."""
    row: dict[str, Any] | None = None
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            row = panel
            yield panel, None
            for inner in panel.get("panels", []):
                yield inner, panel
        else:
            yield panel, row


def query_panels(dashboard: Dashboard) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Panels that query something (rows are not)."""
    for panel, row in iter_panels(dashboard):
        if panel.get("type") != "row":
            yield panel, row


def is_compose_only(row: Mapping[str, Any] | None) -> bool:
    return row is not None and COMPOSE_ONLY_MARK in row.get("title", "")


# ------------------------------------------------------------------------------------------
# expanding Grafana's variables

VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


def variable_names(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(expr)}


def variable_values(dashboard: Dashboard) -> dict[str, str]:
    """What each template variable stands for when its default ("All") is selected."""
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if len(current) == 1 else "|".join(current)
        if current in (None, "", "$__all") and var.get("includeAll"):
            values[var["name"]] = var.get("allValue") or ".*"
        else:
            values[var["name"]] = str(current or "")
    return values


def expand(
    expr: str,
    dashboard: Dashboard,
    *,
    rate_interval: str = RATE_INTERVAL,
    interval: str = "15s",
    range_: str = "15m",
) -> str:
    """expr with every $variable replaced as Grafana would with the defaults selected."""
    values = variable_values(dashboard) | {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
    }

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values.get(name, match.group(0))

    return VARIABLE.sub(replace, expr)


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+),\s*)?(\w+)\s*\)\s*$", re.S)


def variable_query_expr(query: str) -> str | None:
    """The PromQL behind a `label_values(metric, label)` variable; None for other kinds."""
    match = LABEL_VALUES.match(query)
    if not match or not match.group(1):
        return None
    selector, label = match.group(1), match.group(2)
    return f"group by ({label}) ({selector})"


def _query_text(var: Mapping[str, Any]) -> str:
    query = var.get("query", "")
    return query.get("query", "") if isinstance(query, Mapping) else str(query)


# ------------------------------------------------------------------------------------------
# structure


def structural_problems(dashboards: Mapping[str, Dashboard]) -> list[str]:
    """What Grafana would reject or show wrongly, without asking Prometheus."""
    problems = []
    uids: dict[str, str] = {}
    for fname, dash in dashboards.items():
        uid = dash.get("uid")
        where = f"{fname}"
        if not isinstance(uid, str) or not re.fullmatch(r"surge-[a-z0-9]+(-[a-z0-9]+)*", uid):
            problems.append(f"{where}: uid {uid!r} is not a readable surge-<name> uid")
        elif uid in uids:
            problems.append(f"{where}: uid {uid!r} also used by {uids[uid]}")
        else:
            uids[str(uid)] = fname
        if fname != f"{uid}.json":
            problems.append(f"{where}: file should be named after its uid ({uid}.json)")
        if dash.get("id") is not None:
            problems.append(f"{where}: provisioned dashboards carry no numeric id")
        if not dash.get("title"):
            problems.append(f"{where}: no title")
        if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
            problems.append(f"{where}: schemaVersion {dash.get('schemaVersion')!r} is too old")
        defined = set()
        for var in dash.get("templating", {}).get("list", []):
            defined.add(var.get("name"))
            if var.get("type") == "query":
                if (var.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                    problems.append(f"{where}: variable ${var.get('name')} not on {DATASOURCE_UID}")
                if variable_query_expr(_query_text(var)) is None:
                    problems.append(f"{where}: variable ${var.get('name')}: not label_values(...)")
        ids: dict[int, str] = {}
        for panel, _row in iter_panels(dash):
            title = panel.get("title") or ""
            here = f"{where} panel {title!r}"
            if not title:
                problems.append(f"{where}: a panel (id {panel.get('id')}) has no title")
            pid = panel.get("id")
            if not isinstance(pid, int):
                problems.append(f"{here}: no numeric id")
            elif pid in ids:
                problems.append(f"{here}: id {pid} also used by {ids[pid]!r}")
            else:
                ids[pid] = title
            grid = panel.get("gridPos") or {}
            if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
                problems.append(f"{here}: gridPos needs integer x, y, w, h")
            elif grid["x"] + grid["w"] > 24 or grid["w"] <= 0 or grid["h"] <= 0:
                problems.append(f"{here}: gridPos {grid} does not fit the 24-column grid")
            if panel.get("type") == "row":
                continue
            targets = panel.get("targets") or []
            panel_ds = (panel.get("datasource") or {}).get("uid")
            if panel_ds not in (None, DATASOURCE_UID):
                problems.append(f"{here}: datasource uid {panel_ds!r}, not {DATASOURCE_UID!r}")
            if not any((t.get("expr") or "").strip() for t in targets):
                problems.append(f"{here}: no target with a query")
            for t in targets:
                ds = (t.get("datasource") or {}).get("uid", panel_ds)
                if ds != DATASOURCE_UID:
                    problems.append(f"{here}: target {t.get('refId')} queries {ds!r}")
                if not (t.get("expr") or "").strip():
                    problems.append(f"{here}: target {t.get('refId')} has an empty query")
                for name in variable_names(t.get("expr", "")) - defined - BUILTINS:
                    problems.append(f"{here}: ${name} is not a variable of this dashboard")
            if len({t.get("refId") for t in targets}) != len(targets):
                problems.append(f"{here}: targets need distinct refIds")
    return problems


def all_queries(
    dashboards: Iterable[Dashboard],
    *,
    rate_interval: str = RATE_INTERVAL,
    interval: str = "15s",
    skip_compose_only: bool = False,
) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expanded expr) of every panel target and every variable."""
    out = []
    for dash in dashboards:
        uid = str(dash.get("uid"))
        for var in dash.get("templating", {}).get("list", []):
            expr = variable_query_expr(_query_text(var))
            if expr is not None:
                out.append((uid, f"variable ${var['name']}", expand(expr, dash)))
        for panel, row in query_panels(dash):
            if skip_compose_only and is_compose_only(row):
                continue
            for t in panel.get("targets", []):
                if (t.get("expr") or "").strip():
                    expr = expand(t["expr"], dash, rate_interval=rate_interval, interval=interval)
                    out.append((uid, panel.get("title", ""), expr))
    return out


# ------------------------------------------------------------------------------------------
# asking Prometheus


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or answered something other than its API's JSON."""


def _api(
    prometheus_url: str, path: str, params: Mapping[str, str], timeout: float
) -> dict[str, Any]:
    data = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(f"{prometheus_url.rstrip('/')}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as e:  # 400 bad_data, 422 execution: JSON bodies too
        try:
            return dict(json.load(e))
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {e.code}") from e
    except (OSError, ValueError) as e:
        raise PrometheusError(f"cannot query {prometheus_url}: {e}") from e


def query_errors(
    prometheus_url: str, queries: Iterable[tuple[str, str, str]], *, timeout: float = 10.0
) -> list[tuple[str, str, str, str]]:
    """(dashboard, panel, expr, error) for each query Prometheus rejects (e.g. a parse error:
    status "error", errorType "bad_data"). Needs a running Prometheus, not data."""
    errors = []
    for dashboard, panel, expr in queries:
        answer = _api(prometheus_url, "/api/v1/query", {"query": expr}, timeout)
        if answer.get("status") != "success":
            detail = f"{answer.get('errorType')}: {answer.get('error')}"
            errors.append((dashboard, panel, expr, detail))
    return errors


def _numbers(series: Mapping[str, Any]) -> bool:
    values = series.get("values") or ([series["value"]] if "value" in series else [])
    for _ts, value in values:
        try:
            if not math.isnan(float(value)):
                return True
        except (TypeError, ValueError):
            continue
    return False


def check_queries(
    prometheus_url: str,
    queries: Iterable[tuple[str, str, str]],
    *,
    window: float = 900.0,
    step: float = 5.0,
    end: float | None = None,
    timeout: float = 10.0,
) -> list[QueryResult]:
    """Run each (dashboard, panel, expr) as a range query over the last `window` seconds."""
    end = time.time() if end is None else end
    params = {"start": f"{end - window:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    results = []
    for dashboard, panel, expr in queries:
        answer = _api(prometheus_url, "/api/v1/query_range", {"query": expr, **params}, timeout)
        if answer.get("status") != "success":
            error = f"{answer.get('errorType')}: {answer.get('error')}"
            results.append(QueryResult(dashboard, panel, expr, 0, error))
            continue
        series = sum(1 for s in answer.get("data", {}).get("result", []) if _numbers(s))
        results.append(QueryResult(dashboard, panel, expr, series))
    return results


def panel_queries_without_data(
    prometheus_url: str,
    dashboards: Iterable[Dashboard] | Mapping[str, Dashboard],
    *,
    skip_compose_only: bool = False,
    rate_interval: str = RATE_INTERVAL,
    window: float = 900.0,
    step: float = 5.0,
) -> list[Missing]:
    """(dashboard uid, panel title, expr) of every query that returns nothing now: no series,
    only NaN, or an error. Variable queries are included as panel "variable $name"."""
    boards = list(dashboards.values()) if isinstance(dashboards, Mapping) else list(dashboards)
    queries = all_queries(boards, rate_interval=rate_interval, skip_compose_only=skip_compose_only)
    results = check_queries(prometheus_url, queries, window=window, step=step)
    return [Missing(r.dashboard, r.panel, r.expr) for r in results if not r.has_data]


# ------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check that every Grafana panel of surge has data in a live Prometheus."
    )
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="%(default)s")
    parser.add_argument("--dashboards", default=str(DASHBOARD_DIR), help="folder of *.json")
    parser.add_argument(
        "--skip-compose-only",
        action="store_true",
        help=f"leave out panels in rows marked {COMPOSE_ONLY_MARK!r} (cadvisor)",
    )
    parser.add_argument(
        "--window", type=float, default=900, help="seconds back from now (default: 900)"
    )
    parser.add_argument(
        "--rate-interval",
        default=RATE_INTERVAL,
        help="what $__rate_interval stands for (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every query")
    args = parser.parse_args(argv)

    dashboards = load_dashboards(args.dashboards)
    problems = structural_problems(dashboards)
    for problem in problems:
        print(f"STRUCTURE  {problem}")
    queries = all_queries(
        dashboards.values(),
        rate_interval=args.rate_interval,
        skip_compose_only=args.skip_compose_only,
    )
    try:
        results = check_queries(args.prometheus, queries, window=args.window)
    except PrometheusError as e:
        print(e, file=sys.stderr)
        return 2
    empty = [r for r in results if not r.has_data]
    for r in results:
        if r.has_data and not args.verbose:
            continue
        state = f"ERROR {r.error}" if r.error else ("ok" if r.has_data else "NO DATA")
        print(f"{state:8}  {r.dashboard} / {r.panel}\n          {r.expr}")
    print(
        f"{len(results) - len(empty)} of {len(results)} queries in {len(dashboards)} dashboards "
        f"returned data" + (" (compose-only panels skipped)" if args.skip_compose_only else "")
    )
    return 1 if empty or problems else 0


if __name__ == "__main__":
    sys.exit(main())
