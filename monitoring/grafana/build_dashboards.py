"""Writes surge's Grafana dashboards: monitoring/grafana/provisioning/dashboards/surge-*.json.

The panels are data, in panels.yaml beside this file: per dashboard its variables and a list of
rows and panels (kind and title, queries with legends, unit, description, options). This script
turns each panel kind into Grafana's JSON with one function, gives every panel the same
datasource, ids and layout (left to right on Grafana's 24-column grid), and writes the JSON files
Grafana loads (the provider in that folder points at them), which are committed. Edit
panels.yaml, then:

    python monitoring/grafana/build_dashboards.py          # rewrite the JSON files
    python monitoring/grafana/build_dashboards.py --check  # exit 1 when they are out of date

panels.yaml keys: a panel is `ts:` (time series), `stat:` or `table:` with its title, or `row:`
(`collapsed: true` only on the last row: its panels live inside it); `q:` is a list of
[PromQL, legend] (legend "" lets Grafana name the series); optional `unit` (short), `about` (the
description), `w`/`h` (grid size, per kind by default), `stack`, `min` (0; null for none),
`max`, `legend: table`; for stats `thresholds` ([base color, value, color, ...]), `mappings`
({value: [text, color]}), `decimals`, `text` (textMode).

Every metric name in panels.yaml was read from a live /metrics of the exporter that emits it
(Debian's node 1.5, nginx 0.11, redis 1.45 and postgres 0.11 exporters; k6 1.1's
experimental-prometheus-rw output with K6_PROMETHEUS_RW_TREND_STATS="p(50),p(95),p(99),avg,max";
surge's own are listed in docs/metrics.md). tests/e2e/test_dashboards.py runs every query
against a Prometheus scraping those exporters and fails on any that returns nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PANELS = HERE / "panels.yaml"
OUT_DIR = HERE / "provisioning" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
"""monitoring/grafana/provisioning/datasources/prometheus.yaml gives it this fixed uid."""
SCHEMA_VERSION = 39
SIZES = {"ts": (8, 7), "stat": (4, 4), "table": (8, 5)}
"""Grid width and height of each kind unless a panel says otherwise."""

Json = dict[str, Any]


def _targets(p: Json, *, instant: bool = False) -> list[Json]:
    return [
        {
            "datasource": DATASOURCE,
            "expr": expr,
            "legendFormat": legend or "__auto",
            "range": not instant,
            "instant": instant,
        }
        | ({"format": "table"} if instant else {})
        | {"refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(p["q"])
    ]


def _thresholds(spec: list[Any]) -> Json:
    """[base color, value, color, value, color, ...] -> Grafana's absolute steps."""
    steps = [{"color": spec[0], "value": None}]
    steps += [{"color": c, "value": v} for v, c in zip(spec[1::2], spec[2::2], strict=True)]
    return {"mode": "absolute", "steps": steps}


def _common(p: Json, kind: str, title: str) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": p.get("about", ""),
        "datasource": DATASOURCE,
    }


def timeseries(p: Json) -> Json:
    stack = p.get("stack", False)
    defaults: Json = {
        "unit": p.get("unit", "short"),
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
        "thresholds": _thresholds(["green"]),
    }
    # Rates and sizes start at 0 unless a panel says null (values that go negative).
    for key, default in (("min", 0), ("max", None)):
        if p.get(key, default) is not None:
            defaults[key] = p.get(key, default)
    legend: Json = {"showLegend": True, "placement": "bottom"}
    if p.get("legend") == "table":
        legend |= {"displayMode": "table", "calcs": ["mean", "max", "lastNotNull"]}
    else:
        legend |= {"displayMode": "list", "calcs": []}
    return _common(p, "timeseries", p["ts"]) | {
        "targets": _targets(p),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(p: Json) -> Json:
    defaults: Json = {
        "unit": p.get("unit", "short"),
        "color": {"mode": "thresholds"},
        "thresholds": _thresholds(p.get("thresholds", ["green"])),
    }
    if "decimals" in p:
        defaults["decimals"] = p["decimals"]
    if "mappings" in p:
        pairs = enumerate(sorted(p["mappings"].items()))
        options = {str(v): {"text": t, "color": c, "index": i} for i, (v, (t, c)) in pairs}
        defaults["mappings"] = [{"type": "value", "options": options}]
    return _common(p, "stat", p["stat"]) | {
        "targets": _targets(p),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": p.get("text", "auto"),
        },
    }


def table(p: Json) -> Json:
    hidden = {"Time": True, "Value": True, "__name__": True}
    return _common(p, "table", p["table"]) | {
        "targets": _targets(p, instant=True),
        "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [{"id": "organize", "options": {"excludeByName": hidden}}],
    }


KINDS = {"ts": timeseries, "stat": stat, "table": table}
KEYS = {"q", "unit", "about", "w", "h", "stack", "min", "max", "legend"}
KEYS |= {"thresholds", "mappings", "decimals", "text"}
"""What a panel may say besides its kind; anything else is a typo that would be dropped."""


def variable(v: Json) -> Json:
    """A multi-value variable listing a label's values, "All" selected (allValue as regex)."""
    return {
        "name": v["name"],
        "label": v["label"],
        "description": v.get("description", ""),
        "type": "query",
        "datasource": DATASOURCE,
        "query": v["query"],
        "definition": v["query"],
        "refresh": 2,  # on time range change: new replicas appear without a reload
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": v.get("all", ".*"),
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


def lay_out(items: list[Json]) -> list[Json]:
    """Ids in order; panels flow left to right, wrapping at 24 columns; a row starts a line."""
    top: list[Json] = []
    into, x, y, line_h = top, 0, 0, 0
    for n, item in enumerate(items, start=1):
        if "row" in item:
            if into is not top:
                raise ValueError(f"{item}: a collapsed row must be the last (panels live in it)")
            y, x, line_h = y + line_h, 0, 0
            collapsed = item.get("collapsed", False)
            grid = {"h": 1, "w": 24, "x": 0, "y": y}
            row = {"type": "row", "title": item["row"], "id": n, "collapsed": collapsed}
            top.append(row | {"gridPos": grid, "panels": []})
            into = top[-1]["panels"] if collapsed else top
            y += 1
            continue
        kinds, unknown = item.keys() & KINDS.keys(), item.keys() - KINDS.keys() - KEYS
        if len(kinds) != 1 or unknown or "q" not in item:
            raise ValueError(f"{item}: one of {sorted(KINDS)} and q, no {sorted(unknown)}")
        kind = kinds.pop()
        w, h = item.get("w", SIZES[kind][0]), item.get("h", SIZES[kind][1])
        if x + w > 24:
            y, x, line_h = y + line_h, 0, 0
        into.append({"id": n, "gridPos": {"h": h, "w": w, "x": x, "y": y}} | KINDS[kind](item))
        x, line_h = x + w, max(line_h, h)
    return top


def dashboard(uid: str, d: Json) -> Json:
    return {
        "uid": uid,
        "title": d["title"],
        "description": d["description"],
        "tags": ["surge"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,  # shared crosshair: line load up against the system
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": d.get("refresh", "10s"),
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
        "templating": {"list": [variable(v) for v in d.get("variables", [])]},
        "panels": lay_out(d["panels"]),
    }


def build() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    spec = yaml.safe_load(PANELS.read_text(encoding="utf-8"))
    return {
        f"{uid}.json": json.dumps(dashboard(uid, d), indent=2, ensure_ascii=False) + "\n"
        for uid, d in spec.items()
    }


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
