"""One way to fuzz surge against its OpenAPI schema (schemathesis), for a replica
(tests/test_fuzz.py) and through nginx (tests/test_faults_under_load.py).

Every generated request, schema-valid or not, must get a response the schema allows: no 5xx,
only declared status codes, content types and bodies (problem details for errors), and every
schema-valid id accepted (the id patterns in the schema state exactly what the API takes).
The CLI is used rather than the pytest plugin, whose fixture loader does not run on pytest 9.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def assert_conforms(base_url: str, report_dir: Path, *extra: str) -> None:
    run = subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{base_url}/docs/openapi.json",
            "--checks", "all",
            # No operation links to another: the stateful phase would only invent links.
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "100",
            "--seed", "2026",  # reproducible in CI; change it locally to explore further
            "--request-timeout", "5",
            "--report-dir", str(report_dir),
            *extra,
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout
