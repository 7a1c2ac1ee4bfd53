"""Waiting on a condition in tests: bounded, polled, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until condition() held; fails past timeout."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started
