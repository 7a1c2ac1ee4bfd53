"""One error shape for every 4xx/5xx: RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("surge.api")


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details, the body of every error surge sends."""

    status: int
    title: str
    detail: str
    type: str = "about:blank"


_encode = msgspec.json.Encoder().encode


class ServiceUnavailable(HTTPException):
    """A record could not be read from any store in time: retry soon."""

    status_code = 503


def problem_body(status: int, title: str, detail: str) -> bytes:
    return _encode(Problem(status=status, title=title, detail=detail))


def not_found_detail(noun: str) -> str:
    return f"No {noun} with this id."


def problem_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=problem_body(status, title, detail),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    headers = dict(exc.headers or {})
    # Litestar's own messages for routing errors are fine to show; they hold no internals.
    detail = exc.detail if status < 500 or isinstance(exc, ServiceUnavailable) else _TITLES[500]
    return problem_response(status, _TITLES.get(status, "Error"), detail, headers or None)


def _unexpected_exception_handler(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[bytes]:
    # Logged with its traceback here; the client learns nothing about internals.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, _TITLES[500], "The server failed to answer this request.")


EXCEPTION_HANDLERS = {
    HTTPException: _http_exception_handler,
    Exception: _unexpected_exception_handler,
}
