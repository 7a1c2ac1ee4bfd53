"""The k6 suite against a real surge: the smoke scenario passes its thresholds (k6 exits 99 when one
fails), setup() refuses a target that is not ready or holds other data, every script parses, and
every other script runs a tiny version of its shape with all checks passing.

The target is conftest's `api_url`: one real API replica on Granian, started the way `make up`
starts one, in front of the session's seeded Postgres and Redis (2,000 students, 1,000 bookings).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from k6_runner import (
    EXIT_ABORTED_BY_SCRIPT,
    EXPORT_IDS,
    K6,
    K6_DIR,
    KINDS,
    ROOT,
    SCRIPTS,
    assert_all_checks_passed,
    output,
    run_k6,
)

from core.contract.students import MAX_STUDENT_ID
from core.settings import DatasetSettings
from seeder.generate import FIRST_STUDENT_ID
from stack.servers import HOST, free_port


@pytest.fixture(scope="module")
def k6_binary() -> Path:
    if not K6.exists():
        pytest.fail(f"no k6 at {K6}: it comes from the dev dependency `k6` (make deps)")
    return K6


@pytest.fixture(scope="module")
def booking_ids_file(settings, seeded, tmp_path_factory) -> Path:
    """Real booking ids, exported by k6/export_ids.py the way the make targets run it."""
    out = tmp_path_factory.mktemp("k6-ids") / "booking-ids.json"
    done = subprocess.run(
        [sys.executable, str(EXPORT_IDS), "--count", "200", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "SURGE_DATABASE_URL": settings.stores.database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return out


def js_constant(path: Path, name: str) -> str:
    match = re.search(rf"export const {name} = ([^;]+);", path.read_text())
    assert match, f"{name} not found in {path}"
    return match.group(1).strip()


def test_k6_config_matches_the_data_contract():
    """k6 cannot import Python: the figures it repeats are checked against their source here."""
    config = K6_DIR / "lib" / "config.js"
    assert int(js_constant(config, "MAX_STUDENT_ID")) == MAX_STUDENT_ID
    assert int(js_constant(config, "FIRST_STUDENT_ID")) == FIRST_STUDENT_ID
    assert f"'SURGE_STUDENTS', {DatasetSettings().students}," in js_constant(config, "STUDENTS")


def test_export_ids_writes_real_booking_ids(booking_ids_file, settings):
    ids = json.loads(booking_ids_file.read_text())
    assert len(ids) == len(set(ids)) == 200
    with psycopg.connect(settings.stores.database_url) as conn:
        (known,) = conn.execute(
            "SELECT count(*) FROM bookings WHERE id::text = ANY(%s)", (ids,)
        ).fetchone()
    assert known == 200


def test_smoke_passes_its_thresholds(k6_binary, api_url, booking_ids_file, settings, tmp_path):
    done, summary = run_k6(
        k6_binary,
        "smoke.js",
        tmp_path,
        {
            "BASE_URL": api_url,
            "SURGE_STUDENTS": str(settings.dataset.students),
            "BOOKING_IDS": str(booking_ids_file),
        },
    )
    assert done.returncode == 0, output(done)
    assert_all_checks_passed(summary, KINDS)
    assert summary is not None
    for kind in KINDS:  # the thresholds' per-kind sub-metrics
        assert summary["metrics"][f"checks{{kind:{kind}}}"]["fails"] == 0


def test_setup_refuses_a_target_that_does_not_answer(k6_binary, booking_ids_file, tmp_path):
    nobody = f"http://{HOST}:{free_port()}"
    done, _ = run_k6(
        k6_binary,
        "smoke.js",
        tmp_path,
        {"BASE_URL": nobody, "BOOKING_IDS": str(booking_ids_file), "REQUEST_TIMEOUT": "2s"},
    )
    assert done.returncode == EXIT_ABORTED_BY_SCRIPT, output(done)
    assert "refusing to test an unready target" in done.stderr


def test_setup_refuses_data_other_than_assumed(k6_binary, api_url, booking_ids_file, tmp_path):
    # SURGE_STUDENTS larger than the seeded 2,000: the last student id does not exist.
    done, _ = run_k6(
        k6_binary,
        "smoke.js",
        tmp_path,
        {"BASE_URL": api_url, "SURGE_STUDENTS": "5000", "BOOKING_IDS": str(booking_ids_file)},
    )
    assert done.returncode == EXIT_ABORTED_BY_SCRIPT, output(done)
    assert "SURGE_STUDENTS" in done.stderr


def test_setup_refuses_a_missing_booking_id_file(k6_binary, api_url, settings, tmp_path):
    done, _ = run_k6(
        k6_binary,
        "mix.js",
        tmp_path,
        {
            "BASE_URL": api_url,
            "SURGE_STUDENTS": str(settings.dataset.students),
            "BOOKING_IDS": str(tmp_path / "missing.json"),
        },
    )
    assert done.returncode == EXIT_ABORTED_BY_SCRIPT, output(done)
    assert "export_ids.py" in done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_with_thresholds_first(k6_binary, script, tmp_path):
    done = subprocess.run(
        [str(k6_binary), "inspect", "--execution-requirements", str(K6_DIR / script)],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, output(done)
    options = json.loads(done.stdout)
    assert options["thresholds"], f"{script} has no thresholds: no pass/fail contract"
    assert options["scenarios"], f"{script} has no scenario"
    # One shape for every script: thresholds (the pass/fail contract) first in `options`.
    source = (K6_DIR / script).read_text()
    assert re.search(r"export const options = \{\s*thresholds:", source), script


# A few seconds of each other script: same code paths as a full run, at a load any machine takes.
# Thresholds are off here (--no-thresholds): latency targets are for the benchmark, not for a
# busy test machine; what must hold is that every request got the answer it should.
TINY_RUNS = {
    "reference-ramp.js": ({"STAGES": "2s:4,1s:0"}, ["student"]),
    "spike.js": (
        {"PEAK_VUS": "5", "SPIKE_RISE": "1s", "SPIKE_HOLD": "2s", "SPIKE_FALL": "1s"},
        ["student"],
    ),
    "soak.js": ({"SOAK_VUS": "4", "SOAK_DURATION": "3s"}, ["student", "booking"]),
    "breakpoint.js": (
        {"BREAKPOINT_START_RATE": "5", "STAGES": "3s:30", "BREAKPOINT_PREALLOCATED_VUS": "5"},
        ["student"],
    ),
    "mix.js": ({"STAGES": "1s:6,2s:6"}, ["student", "booking"]),
    "results-day.js": (
        {
            "STAGES": "1s:4,2s:4",
            "LOOK_GAP_MIN": "0.05",
            "LOOK_GAP_MAX": "0.2",
            "MISTYPED_SHARE": "1",
            "PREALLOCATED_VUS": "10",
            "MAX_VUS": "20",
        },
        ["student", "unknown_student", "malformed_student"],
    ),
}


def test_every_script_has_a_tiny_run():
    assert set(TINY_RUNS) == set(SCRIPTS) - {"smoke.js"}


@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_script_runs_with_all_checks_passing(
    k6_binary, api_url, booking_ids_file, settings, script, tmp_path
):
    env, kinds = TINY_RUNS[script]
    done, summary = run_k6(
        k6_binary,
        script,
        tmp_path,
        {
            "BASE_URL": api_url,
            "SURGE_STUDENTS": str(settings.dataset.students),
            "BOOKING_IDS": str(booking_ids_file),
            "THINK_MIN": "0.05",
            "THINK_MAX": "0.2",
            **env,
        },
        "--no-thresholds",
    )
    assert done.returncode == 0, output(done)
    assert_all_checks_passed(summary, kinds)
