"""mtail: nginx's access log as Prometheus series (monitoring/mtail/nginx.mtail).

stub_status has no status codes, so nginx's own refusals (503 at the admission cap, 429, its
502/504 and 404/400) are counted from the access log instead. The same program runs under
`make up` (a supervisord program, stack.launcher), compose (the `mtail` service) and the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PROGRAMS = Path(__file__).resolve().parent.parent / "monitoring" / "mtail"
"""The directory mtail loads its programs from (it reads only the *.mtail files there)."""

DEFAULT_PORT = 3903
"""mtail's own default, which compose keeps."""


def mtail_binary() -> str:
    """SURGE_MTAIL_BIN, else mtail on PATH, else Debian's /usr/bin/mtail."""
    for candidate in (os.environ.get("SURGE_MTAIL_BIN"), shutil.which("mtail"), "/usr/bin/mtail"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("mtail not found: run `make deps` (installs Debian's mtail)")


def mtail_command(log: Path, host: str, port: int, binary: str | None = None) -> list[str]:
    """mtail tailing `log`, serving /metrics on host:port (no `prog` label: one program)."""
    return [
        binary or mtail_binary(),
        "--progs", str(PROGRAMS),
        "--logs", str(log),
        "--address", host,
        "--port", str(port),
        "--emit_prog_label=false",
        "--logtostderr",
    ]  # fmt: skip


def one_shot(log: Path, progs: Path = PROGRAMS) -> str:
    """The Prometheus text mtail exports after reading `log` from its start to its end."""
    done = subprocess.run(
        [mtail_binary(), "--one_shot", "--one_shot_format", "prometheus", "--progs", str(progs),
         "--logs", str(log), "--emit_prog_label=false", "--logtostderr",
         # It still listens, even one-shot: on a port of its own, not a running mtail's.
         "--address", "127.0.0.1", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"mtail --one_shot failed:\n{done.stderr[-3000:]}")
    return done.stdout


__all__ = ["DEFAULT_PORT", "PROGRAMS", "mtail_binary", "mtail_command", "one_shot"]
