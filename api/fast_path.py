"""The record routes' hot path: a record this replica holds goes out from the ASGI entry itself.

Litestar's routing, parameter parsing and response objects cost more than the lookup; for a
record in the replica's own copy none of them is needed. Everything else (a record not held, a
bad id, another route or method) goes on to Litestar unchanged, so the OpenAPI schema, the error
shape and the slow path stay in one place (api.app). The answers are the same bytes and headers
either way (tests compare them).
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from litestar.enums import ScopeType

from api.errors import PROBLEM_MEDIA_TYPE, not_found_detail, problem_body
from api.http_cache import TAG_BYTES, cache_control, validators
from core.contract import DATASETS

if TYPE_CHECKING:
    from litestar.types import (
        ASGIApp,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        Receive,
        Scope,
        Send,
    )

    from api.lookup import Lookup
    from api.metrics import Metrics
    from core.settings import ApiSettings

JSON = b"application/json"
PROBLEM = PROBLEM_MEDIA_TYPE.encode()


def fast_records(app: ASGIApp, lookup: Lookup, metrics: Metrics, api: ApiSettings) -> ASGIApp:
    by_prefix = {f"/{d.name}/": d for d in DATASETS}
    local = lookup.local
    control = cache_control(api)
    outcome = {200: "local_hit", 304: "local_hit", 404: "not_in_live_version"}
    counted = {
        (d.name, method, status): (
            getattr(metrics.outcomes[d.name], outcome[status]),
            *metrics.bound(f"/{d.name}/{{id}}", method, status),
        )
        for d in DATASETS
        for method in ("GET", "HEAD")
        for status in outcome
    }
    # The same bytes and headers as Litestar's 404 (api.app.record_route).
    absent = {
        d.name: (
            problem_body(404, "Not Found", not_found_detail(d.noun)),
            [(b"content-type", PROBLEM)],
        )
        for d in DATASETS
    }

    def from_copy(scope: Scope) -> tuple[str, str, int, list[tuple[bytes, bytes]], bytes] | None:
        """(dataset, method, status, headers, body) when the copy answers, else None."""
        if scope["type"] != ScopeType.HTTP or scope["method"] not in ("GET", "HEAD"):
            return None
        method = scope["method"]
        path = scope["path"]
        slash = path.find("/", 1)
        dataset = by_prefix.get(path[: slash + 1])
        record_id = None if dataset is None else dataset.parse_id(path[slash + 1 :])
        if dataset is None or record_id is None:
            return None
        entry = local.entry(dataset.name, record_id)
        if entry is None:
            if not local.knows_absent(dataset.name, record_id):
                return None
            problem, headers = absent[dataset.name]
            return dataset.name, method, 404, headers, problem
        status, headers = validators(entry[:TAG_BYTES], _if_none_match(scope), control)
        if status == 304:
            return dataset.name, method, 304, headers, b""
        return dataset.name, method, 200, [*headers, (b"content-type", JSON)], entry[TAG_BYTES:]

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        answer = from_copy(scope)
        if answer is None:
            await app(scope, receive, send)
            return
        name, method, status, headers, body = answer
        if status != 304:
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        }
        await send(start)
        sent: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body if method == "GET" else b"",
            "more_body": False,
        }
        await send(sent)
        outcome_count, requests, latency = counted[name, method, status]
        outcome_count.inc()
        requests.inc()
        latency.observe(perf_counter() - started)

    return serve


def _if_none_match(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return value
    return None
