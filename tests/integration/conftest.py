"""The one client of the integration tests: a replica over the seeded session servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from replica import replica

from core.settings import Settings


@pytest.fixture(scope="module")
def client(settings: Settings, seeded: Any) -> Iterator[TestClient]:
    with replica(settings) as client:
        yield client


@pytest.fixture
def fresh(settings: Settings, seeded: Any) -> Iterator[TestClient]:
    """A replica started for this test alone: no circuit, pool or cache state from a fault an
    earlier test caused (the fault tests, the reseed tests)."""
    with replica(settings) as client:
        yield client
