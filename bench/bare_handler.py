"""The yardstick: a bare Litestar handler doing one Redis read and returning the stored bytes.

No validation, no fallback, no error shape: the yardstick surge is measured against.
Served by Granian exactly like surge (stack.servers.granian_command).
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from litestar import Litestar, MediaType, Response, get

from core.contract import LIVE_KEY, STUDENTS, parse_version
from core.settings import Settings


def create_app() -> Litestar:
    settings = Settings.from_env()
    client = aioredis.Redis.from_url(
        settings.stores.redis_url, max_connections=settings.stores.redis_pool_size
    )
    with redis.Redis.from_url(settings.stores.redis_url) as probe:  # the live version, once
        version = parse_version(probe.hget(LIVE_KEY, STUDENTS.name))

    @get("/students/{student_id:int}")
    async def student(student_id: int) -> Response[bytes]:
        body = await client.hget(*STUDENTS.slot(student_id, version))
        return Response(body if isinstance(body, bytes) else b"{}", media_type=MediaType.JSON)

    @get("/ready")
    async def ready() -> dict[str, str]:  # k6's setup() refuses a target without it
        return {"status": "ready"}

    return Litestar([student, ready], openapi_config=None)
