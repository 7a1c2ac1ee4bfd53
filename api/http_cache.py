"""HTTP caching of records for what sits in front of surge (browsers, CDNs, nginx).

The ETag is a digest of the exact bytes, so it is strong, the same on every replica, and changes
with a reseed or a refresh only when the record itself does. Cache-Control bounds how long a
reader may see a record as it was before a change (SURGE_HTTP_MAX_AGE).
"""

from __future__ import annotations

from hashlib import blake2b

from core.settings import ApiSettings

TAG_BYTES = 26
"""Length of every ETag: a quoted 24-digit hex digest. The replica's copy keeps each record's
ETag in front of its bytes (api.local_cache), so the hot path slices it instead of hashing."""


def etag(body: bytes) -> bytes:
    return b'"' + blake2b(body, digest_size=12).hexdigest().encode() + b'"'


def cache_control(api: ApiSettings) -> bytes:
    return f"public, max-age={api.http_max_age}, stale-if-error={api.http_stale_if_error}".encode()


def validators(
    tag: bytes, if_none_match: bytes | None, control: bytes
) -> tuple[int, list[tuple[bytes, bytes]]]:
    """200 or 304 (when If-None-Match names the entity `tag` stands for), and the caching
    headers of either: one answer for the fast path and Litestar's, so both send the same."""
    return 304 if matches(if_none_match, tag) else 200, [
        (b"etag", tag),
        (b"cache-control", control),
    ]


def matches(if_none_match: bytes | None, tag: bytes) -> bool:
    """Whether If-None-Match names this entity (weak comparison, RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == b"*":
        return True
    return any(
        candidate.strip().removeprefix(b"W/") == tag for candidate in if_none_match.split(b",")
    )
