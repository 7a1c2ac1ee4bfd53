"""The server stack's own floor: a raw ASGI app that answers every student lookup with a fixed
record (the id asked for, so k6's checks pass), served by Granian exactly like surge, behind the
project's nginx. What a load costs against it is what Granian and nginx cost before any lookup;
what surge costs beyond it is surge's own work."""

from __future__ import annotations

from typing import Any

from bench.floor import PADDING

HEADERS = [(b"content-type", b"application/json")]


def create_app() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        if path == "/ready":
            body = b'{"status":"ready"}'
        else:
            body = b'{"id":%s,"name":"%s"}' % (path.rsplit("/", 1)[-1].encode(), PADDING.encode())
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": body})

    return app
