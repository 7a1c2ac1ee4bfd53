"""monitoring/grafana/build_dashboards.py: the committed JSON is what panels.yaml builds.

Needs no server: the queries themselves are run against a real Prometheus by
tests/e2e/test_dashboards.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "monitoring" / "grafana"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "surge_build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load()


def test_rebuilding_gives_the_committed_files_byte_for_byte() -> None:
    first, second = build.build(), build.build()
    assert first == second
    committed = sorted(p.name for p in build.OUT_DIR.glob("*.json"))
    assert sorted(first) == committed, "run monitoring/grafana/build_dashboards.py"
    for name, text in first.items():
        assert (build.OUT_DIR / name).read_text(encoding="utf-8") == text, f"{name} is stale"
    assert build.main(["--check"]) == 0


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [inner for p in dashboard["panels"] for inner in [p, *p.get("panels", [])]]


def test_ids_are_unique_and_panels_stay_on_the_grid() -> None:
    for name, text in build.build().items():
        panels = _panels(json.loads(text))
        assert len({p["id"] for p in panels}) == len(panels), name
        for p in panels:
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (name, p["title"])


def test_nginx_keeps_the_access_log_row() -> None:
    nginx = json.loads(build.build()["surge-nginx.json"])
    titles = [p["title"] for p in _panels(nginx)]
    row = titles.index("Answers, from the access log (mtail)")
    assert titles[row + 1 :] == [
        "Refused by nginx",
        "nginx's own errors by status",
        "Requests/s by status and route",
        "Request time by route (nginx)",
    ]
    exprs = [t["expr"] for p in _panels(nginx)[row + 1 :] for t in p["targets"]]
    assert all('job="mtail"' in e for e in exprs)


@pytest.mark.parametrize(
    "panel",
    [
        {"ts": "typo", "q": [["up", ""]], "unti": "s"},
        {"ts": "no query"},
        {"ts": "two kinds", "stat": "x", "q": [["up", ""]]},
    ],
)
def test_a_mistyped_panel_is_refused(panel: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build.lay_out([panel])


def test_a_row_after_a_collapsed_row_is_refused() -> None:
    items = yaml.safe_load("[{row: a, collapsed: true}, {ts: p, q: [[up, '']]}, {row: b}]")
    with pytest.raises(ValueError, match="collapsed row"):
        build.lay_out(items)
