"""An API replica in-process (Litestar's TestClient), built the production way (create_app),
and the child processes the tests start over their settings (a keeper, a Granian replica)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from polling import poll

from api.app import create_app
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def replica(settings: Settings, **changes: Any) -> Iterator[TestClient]:
    """An app over `settings` with `changes`, its own copy (when on) warmed before use."""
    app = create_app(settings.replace(**changes))
    with TestClient(app=app) as client:
        lookup = app.state.lookup
        poll(lambda: all(t.done() for t in lookup._warmers.values()), 10, "warm-up")
        yield client


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a process started over `settings` (a keeper, a Granian replica): ours
    without the developer's SURGE_* variables, plus every setting."""
    ours = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    return {**ours, **settings.as_env()}


@contextmanager
def keeper(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`surge-seed --watch 0.2` over `settings` in a child process writing to `log`; stopped
    (SIGTERM, then waited for) when the block ends, so its exit code can be asserted after."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "seeder", "--watch", "0.2"],
            cwd=ROOT, env=child_env(settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
