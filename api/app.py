"""The surge API: `create_app()` builds it; Granian serves it (`--interface asgi --factory`)."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import msgspec
from litestar import HttpMethod, Litestar, MediaType, Response, get, route
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import HeaderParameter, Parameter
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from api.admin import admin_router
from api.errors import EXCEPTION_HANDLERS, Problem, not_found_detail, problem_response
from api.fast_path import fast_records
from api.http_cache import cache_control, etag, validators
from api.lookup import Lookup
from api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from api.metrics import Metrics
from core.contract import DATASETS, Dataset
from core.settings import ApiSettings, Settings

_encode = msgspec.json.Encoder().encode


# HEAD is answered like GET without the body (RFC 9110 9.3.2), as caches and monitors expect.
READ_METHODS = [HttpMethod.GET, HttpMethod.HEAD]


class Readiness(msgspec.Struct, frozen=True):
    status: str
    """ready (every component up), degraded (a store is down, lookups are still answered) or
    not ready (no store answers and the replica's copy does not hold every record)."""
    components: dict[str, str]


def readiness(components: dict[str, str]) -> Readiness:
    """Ready means "can answer lookups": an orchestrator must not take every replica out of
    service because Redis restarts, while their copies (or Postgres) still serve."""
    stores_up = [components[k] == "up" for k in ("redis", "postgres")]
    if all(stores_up):
        return Readiness("ready", components)
    if any(stores_up) or components.get("copy") == "complete":
        return Readiness("degraded", components)
    return Readiness("not ready", components)


def record_route(dataset: Dataset, lookup: Lookup, api: ApiSettings) -> HTTPRouteHandler:
    """GET /{dataset}/{id}: parse the id, look the record up, send its stored bytes as they are.

    Records this replica holds are answered before Litestar by api.fast_path, with the same
    bytes and headers; this is the path of every other lookup and the one the schema shows."""
    parse_id = dataset.parse_id
    not_found = not_found_detail(dataset.noun)
    control = cache_control(api)

    async def read_record(
        record_id: Annotated[str, Parameter(schema_extra={"pattern": dataset.id_pattern})],
        if_none_match: Annotated[
            str | None,
            HeaderParameter(
                name="If-None-Match",
                description="An ETag this client holds: 304 when the record is unchanged.",
            ),
        ] = None,
    ) -> Response[bytes]:
        key = parse_id(record_id)
        if key is None:
            raise ValidationException(detail=f"Invalid {dataset.noun} id: {dataset.id_rule}.")
        body = await lookup.get(dataset, key)
        if body is None:
            return problem_response(404, "Not Found", not_found)
        asked = if_none_match.encode() if if_none_match else None
        status, pairs = validators(etag(body), asked, control)
        headers = {name.decode(): value.decode() for name, value in pairs}
        if status == 304:
            return Response(b"", status_code=304, headers=headers)
        return Response(body, media_type=MediaType.JSON, headers=headers)

    return route(
        f"/{dataset.name}/{{record_id:str}}",
        http_method=READ_METHODS,
        operation_id=lambda _handler, method, _path: f"{method.lower()}_{dataset.noun}",
        summary=f"One {dataset.noun} by id",
        description=dataset.id_rule[0].upper() + dataset.id_rule[1:] + ".",
        tags=[dataset.name],
        responses={
            200: ResponseSpec(dataset.record_type, description=f"The {dataset.noun}"),
            304: ResponseSpec(None, description="Unchanged since the ETag in If-None-Match"),
            400: ResponseSpec(
                Problem, description="Malformed id", media_type="application/problem+json"
            ),
            404: ResponseSpec(
                Problem, description="No such record", media_type="application/problem+json"
            ),
            503: ResponseSpec(
                Problem,
                description="No store can answer now; see Retry-After",
                media_type="application/problem+json",
            ),
        },
    )(read_record)


DOCS_ASSETS = "/docs/assets"


def swagger_ui() -> SwaggerRenderPlugin:
    """/docs with Swagger UI from the pinned swagger-ui-bundle-v2 package, served by the replica
    itself: the page works on a network without a way out (no CDN)."""
    return SwaggerRenderPlugin(
        js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
        path="/",
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    settings.refuse_unsafe_production()
    metrics = Metrics(enabled=settings.api.metrics)
    lookup = Lookup(settings.stores, settings.api, metrics)
    metrics.watch(lookup.stats)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await lookup.open()
        # Everything built so far (app, routes, schema, pools) lives as long as the process:
        # out of the collector's sight, full collections stop rescanning it under load.
        gc.freeze()
        try:
            yield
        finally:
            await lookup.close()

    @route("/health", http_method=READ_METHODS, tags=["operations"], summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @route(
        "/ready",
        http_method=READ_METHODS,
        tags=["operations"],
        summary="Whether this replica can answer lookups (200 ready or degraded, else 503)",
        responses={
            503: ResponseSpec(
                Readiness, description="No store answers and the replica's copy is not complete"
            )
        },
    )
    async def ready() -> Response[Readiness]:
        state = readiness(await lookup.readiness())
        return Response(state, status_code=503 if state.status == "not ready" else 200)

    @get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics of this replica",
        media_type=METRICS_CONTENT_TYPE,
    )
    async def prometheus_metrics() -> Response[bytes]:
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = Litestar(
        route_handlers=[
            *(record_route(d, lookup, settings.api) for d in DATASETS),
            health,
            ready,
            *([prometheus_metrics] if settings.api.metrics else []),
            *([admin] if (admin := admin_router(settings, lookup)) else []),
            create_static_files_router(DOCS_ASSETS, [swagger_ui_path], name="docs-assets"),
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="surge",
            version="0.1.0",
            description="Exam results and ticket bookings, read at spike scale.",
            path="/docs",
            render_plugins=[swagger_ui()],
        ),
        logging_config=None,
        debug=False,
    )
    app.state.lookup = lookup
    if settings.api.metrics:
        # Outermost, around routing itself, so unknown routes (404) and 405s are counted too.
        app.asgi_handler = metrics.middleware(app.asgi_handler)
    # Outside the metrics middleware: the fast path counts its own requests, more cheaply.
    app.asgi_handler = fast_records(app.asgi_handler, lookup, metrics, settings.api)
    return app
