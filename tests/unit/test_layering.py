"""Who may import whom: core at the bottom (the API and the seeder share it and nothing else),
and no import cycle between the packages. Read from the source with ast, every import counted
(function-level ones too), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "api", "seeder", "stack", "bench")
ALLOWED = {
    "core": set(),
    "api": {"core"},
    "seeder": {"core"},
    "stack": {"core", "seeder"},  # `make up` seeds in-process
    "bench": {"core", "api", "seeder", "stack"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Each first-party package this one imports, with the files that do."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_each_package_imports_only_what_it_may():
    for package, allowed in ALLOWED.items():
        extra = {k: v for k, v in imported_packages(package).items() if k not in allowed}
        assert not extra, f"{package} imports {extra}"


def test_no_import_cycle_between_packages():
    graph = {package: set(imported_packages(package)) for package in PACKAGES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {exc.args[1]}") from None
    assert order[0] == "core"
