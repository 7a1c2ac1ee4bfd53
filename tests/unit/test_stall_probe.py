"""bench/stall_probe.py: a real child process, two seconds of it."""

from __future__ import annotations

import time

from bench.stall_probe import StallProbe


def test_the_probe_reports_each_second_how_long_it_overslept() -> None:
    with StallProbe() as probe:
        time.sleep(2.5)
    run: dict = {}
    probe.attach(run)
    assert len(run["stall_series"]) >= 2
    assert all(0.0 <= p["stall_ms"] < 1000.0 for p in run["stall_series"])
    assert [p["t"] for p in run["stall_series"]] == sorted(p["t"] for p in run["stall_series"])
    assert run["stall_ms_max"] == max(p["stall_ms"] for p in run["stall_series"])
