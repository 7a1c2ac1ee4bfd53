"""The read path's pieces that need no server: the negative cache, the local copy's bounds,
what readiness means."""

from __future__ import annotations

import pytest

from api.app import readiness
from api.http_cache import TAG_BYTES, etag
from api.local_cache import ENTRY_OVERHEAD, LocalCache
from api.lookup import NegativeCache


def test_negative_cache_keeps_only_live_entries_and_at_most_its_size():
    # ttl 0: every entry is dead as soon as it is added, so each add drops the one before it.
    # (Before, dead entries stayed until `size` forced them out: replica memory rose ~1 MB a
    # minute in the soak.)
    dead_at_once = NegativeCache(ttl=0.0, size=100_000)
    for i in range(1_000):
        dead_at_once.add(("students", i))
    assert len(dead_at_once) == 1
    assert ("students", 999) not in dead_at_once

    bounded = NegativeCache(ttl=3600.0, size=10)
    for i in range(25):
        bounded.add(("students", i))
    bounded.add(("students", 20))  # re-added: now the newest, not the oldest
    assert len(bounded) == 10
    assert [("students", i) in bounded for i in (14, 15, 20, 24)] == [False, True, True, True]
    bounded.add(("students", 99))
    assert ("students", 15) not in bounded and ("students", 20) in bounded


def test_local_cache_evicts_oldest_and_keeps_one_version():
    body = b"x" * 80
    size = len(body) + TAG_BYTES + ENTRY_OVERHEAD  # the ETag is kept in front of the bytes
    cache = LocalCache(max_bytes=3 * size)
    cache.switch("students", 1)
    for record_id in range(5):
        cache.put("students", 1, record_id, body)
    assert cache.records("students") == 3
    assert cache.get("students", 0) is None and cache.get("students", 4) == body
    assert cache.entry("students", 4) == etag(body) + body and len(etag(body)) == TAG_BYTES
    assert cache.used == 3 * size
    cache.put("students", 2, 9, body)  # read for a version no longer (or not yet) live
    assert cache.get("students", 9) is None
    cache.discard("students", 4)
    assert cache.get("students", 4) is None and cache.used == 2 * size
    cache.switch("students", 2)
    assert cache.records("students") == 0 and cache.used == 0
    too_big = LocalCache(max_bytes=10)
    too_big.switch("students", 1)
    too_big.put("students", 1, 1, body)
    assert too_big.records("students") == 0 and too_big.used == 0


@pytest.mark.parametrize(
    ("redis", "postgres", "copy", "status"),
    [
        ("up", "up", "partial", "ready"),
        ("down", "up", "off", "degraded"),
        ("up", "down", "partial", "degraded"),
        ("down", "down", "complete", "degraded"),  # the copy answers every known record
        ("down", "down", "partial", "not ready"),
        ("down", "down", "off", "not ready"),
    ],
)
def test_ready_means_able_to_answer(redis, postgres, copy, status):
    state = readiness({"redis": redis, "postgres": postgres, "copy": copy})
    assert state.status == status
