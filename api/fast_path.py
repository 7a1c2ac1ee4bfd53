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

from api.contract import DATASETS
from api.http_cache import cache_control, etag, matches

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from api.lookup import Lookup
    from api.metrics import Metrics
    from api.settings import Settings

JSON = b"application/json"


def fast_records(app: ASGIApp, lookup: Lookup, metrics: Metrics, settings: Settings) -> ASGIApp:
    by_prefix = {f"/{d.name}/": d for d in DATASETS}
    local = lookup.local
    control = cache_control(settings)
    counted = {
        (d.name, method, status): (metrics.outcomes[d.name].local_hit, *metrics.bound(
            f"/{d.name}/{{id}}", method, status
        ))
        for d in DATASETS
        for method in ("GET", "HEAD")
        for status in (200, 304)
    }  # fmt: skip

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"]
            slash = path.find("/", 1)
            dataset = by_prefix.get(path[: slash + 1])
            if dataset is not None:
                started = perf_counter()
                record_id = dataset.parse_id(path[slash + 1 :])
                body = None if record_id is None else local.get(dataset.name, record_id)
                if body is not None:
                    tag = etag(body)
                    status = 304 if matches(_if_none_match(scope), tag) else 200
                    headers = [(b"etag", tag), (b"cache-control", control)]
                    if status == 200:
                        headers += [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                    sent = body if status == 200 and scope["method"] == "GET" else b""
                    await send({"type": "http.response.body", "body": sent})
                    outcome, requests, latency = counted[dataset.name, scope["method"], status]
                    outcome.inc()
                    requests.inc()
                    latency.observe(perf_counter() - started)
                    return
        await app(scope, receive, send)

    return serve


def _if_none_match(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return value  # type: ignore[no-any-return]
    return None
