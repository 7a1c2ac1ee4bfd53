"""What surge's own Python costs a lookup beside the stack floor's app, warm and cold.

`python -m bench.fast_path_cost`: the record routes' fast path (api.fast_path) over a copy of
the default dataset's size, and the stack floor's raw app (bench/raw_asgi.py), each called
directly for random student ids, no server. "cold": before each call the run writes over a
buffer larger than the caches close to the core, as the other processes of the machine do
between two requests that arrive alone; "warm": back to back. Then the pieces of the fast path,
each on its own, cold. Prints microseconds per call.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from types import SimpleNamespace
from typing import Any

from api.fast_path import _if_none_match, fast_records
from api.http_cache import TAG_BYTES, cache_control, validators
from api.local_cache import LocalCache
from api.metrics import Metrics
from bench.floor import PADDING
from bench.raw_asgi import create_app as raw_app
from core.contract import STUDENTS
from core.settings import ApiSettings
from seeder.generate import FIRST_STUDENT_ID

RECORDS = 664_824  # the default dataset's students
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"user-agent", b"k6/1.1"),
    (b"accept", b"*/*"),
    (b"x-forwarded-for", b"10.0.0.7"),
    (b"connection", b""),
]
THRASH = bytearray(8 << 20)
"""Larger than a core's L2 and most of its share of L3: writing it evicts what a request used."""


def _trample() -> None:
    THRASH[::64] = bytes(len(THRASH) // 64)  # one write per cache line


async def _nothing_to_send(message: Any) -> None:
    return None


async def _nothing_to_receive() -> dict[str, Any]:
    return {}


def _drive(coroutine: Awaitable[None]) -> None:
    try:
        coroutine.send(None)  # type: ignore[attr-defined]  # an async def's coroutine
    except StopIteration:
        return


def _serve(app: Callable[[Any, Any, Any], Awaitable[None]], scope: Any) -> None:
    _drive(app(scope, _nothing_to_receive, _nothing_to_send))


def per_call_us(fn: Callable[[Any], object], args: Iterable[Any], cold: bool) -> float:
    total, count = 0.0, 0
    for arg in args:
        if cold:
            _trample()
        started = time.perf_counter()
        fn(arg)
        total += time.perf_counter() - started
        count += 1
    return total / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="per measurement")
    calls = parser.parse_args().calls
    local = LocalCache(2 << 30)
    local.switch(STUDENTS.name, 1)
    for student in range(FIRST_STUDENT_ID, FIRST_STUDENT_ID + RECORDS):
        local.put(STUDENTS.name, 1, student, b'{"id":%d,"name":"%s"}' % (student, PADDING.encode()))
    local.mark_complete(STUDENTS.name, 1, RECORDS, (1, "fast_path_cost"))

    async def slow_path(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError(f"the fast path passed {scope['path']} on")

    lookup = SimpleNamespace(local=local)
    surge = fast_records(slow_path, lookup, Metrics(), ApiSettings())  # type: ignore[arg-type]
    raw = raw_app()
    rng = random.Random(7)
    ids = [rng.randrange(FIRST_STUDENT_ID, FIRST_STUDENT_ID + RECORDS) for _ in range(calls)]
    scopes = [
        {"type": "http", "method": "GET", "path": f"/students/{i}", "headers": HEADERS} for i in ids
    ]
    apps: dict[str, Callable[[Any, Any, Any], Awaitable[None]]] = {
        "stack floor's raw app": raw,
        "surge's fast path": surge,
    }
    for label, app in apps.items():
        for cold in (False, True):
            us = per_call_us(partial(_serve, app), scopes, cold)
            print(f"{label:24s} {'cold' if cold else 'warm'}: {us:6.2f} µs")

    tags = [(local.entry(STUDENTS.name, i) or b"")[:TAG_BYTES] for i in ids]
    control = cache_control(ApiSettings())
    served = Metrics().bound("/students/{id}", "GET", 200)
    pieces: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
        "(an empty call)": (lambda _: None, ids),
        "parse the id": (lambda i: STUDENTS.parse_id(str(i)), ids),
        "the copy's lookup": (lambda i: local.entry(STUDENTS.name, i), ids),
        "caching headers": (lambda t: validators(t, None, control), tags),
        "If-None-Match scan": (lambda s: _if_none_match(s), scopes),
        "the request's counters": (lambda _: (served[0].inc(), served[1].observe(1e-4)), ids),
    }
    print("each piece alone, cold:")
    for label, (fn, args) in pieces.items():
        print(f"  {label:26s} {per_call_us(fn, args, cold=True):6.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
