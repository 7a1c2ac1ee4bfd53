"""How long the machine itself kept a ready process waiting, per second of a run.

A child process at real-time priority (SCHED_FIFO, when allowed: the bench runs as root here)
sleeps 10 ms again and again and reports, each second, the most it overslept. At that priority
it runs before every ordinary process the moment its timer fires, so its oversleep is what no
tuning of surge can remove: the hypervisor not running the VM, interrupts and softirqs, kernel
sections that cannot be preempted. A latency tail in the same seconds is the machine's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

SLEEP_S = 0.01


class StallProbe:
    """`with StallProbe() as probe:` around a run; then probe.series (t from the start, ms)."""

    def __enter__(self) -> StallProbe:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.stall_probe"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.series: list[dict[str, float]] = []
        self.realtime = False
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            if line.startswith("realtime "):
                self.realtime = line.split()[1] == "yes"
                continue
            at, worst = line.split()
            t = round(float(at) - self.started, 1)
            if t >= 0:
                self.series.append({"t": t, "stall_ms": float(worst)})

    def attach(self, run: dict[str, Any]) -> None:
        run["stall_series"] = self.series
        run["stall_ms_max"] = max((p["stall_ms"] for p in self.series), default=0.0)
        run["stall_realtime"] = self.realtime


def main() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        print("realtime yes", flush=True)
    except (PermissionError, AttributeError):  # not root: an ordinary sleeper, still a figure
        print("realtime no", flush=True)
    while True:
        worst, window = 0.0, time.monotonic()
        while time.monotonic() - window < 1.0:
            before = time.monotonic()
            time.sleep(SLEEP_S)
            worst = max(worst, time.monotonic() - before - SLEEP_S)
        print(f"{time.monotonic():.3f} {worst * 1000:.2f}", flush=True)


if __name__ == "__main__":
    main()
