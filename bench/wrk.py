"""The one way the benchmarks run wrk (bench/report.py, bench/api.py, bench/replicas.py).

Every Lua script under bench/ prints one `JSON {...}` line from its done() with requests,
seconds, non_2xx, socket_errors and latency percentiles; this reads it back and adds `errors`
and `rps` (2xx answers a second only: a fast 502 from nginx must not pass for throughput).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from seeder.generate import FIRST_STUDENT_ID

BENCH = Path(__file__).resolve().parent


def wrk(
    url: str,
    seconds: int,
    connections: int,
    script: str,
    *args: object,
    threads: int = 1,
    timeout: str = "2s",
) -> dict[str, Any]:
    """One wrk run. With bench/student_pass.lua (a fixed number of lookups), `seconds` is only
    a bound: the script creates a marker file once its last answer is in, and wrk is then ended
    with SIGINT (it still reports; its duration is the time up to that point). A request not
    answered within `timeout` counts as a socket error (wrk's own default: 2 s)."""
    marker = None
    if script == "student_pass.lua":
        marker = Path(tempfile.mkdtemp(prefix="surge-bench-wrk-")) / "done"
        args = (*args, marker)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout}",
           "--latency", "-s", str(BENCH / script), url, "--", *map(str, args)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + seconds + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if marker is not None and marker.exists():
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.005)
        out, err = proc.communicate(timeout=max(5.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if marker is not None:
            shutil.rmtree(marker.parent, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err[-1000:]}")
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    result: dict[str, Any] = json.loads(line[5:])
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    result["rps"] = (result["requests"] - result["non_2xx"]) / max(result["seconds"], 1e-6)
    return result


def random_students(url: str, seconds: int, connections: int, last_id: int) -> dict[str, Any]:
    """wrk -t1 with bench/random_students.lua: random student ids over the whole dataset."""
    return wrk(url, seconds, connections, "random_students.lua", FIRST_STUDENT_ID, last_id)
