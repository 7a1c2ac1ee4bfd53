"""The one client of the integration tests: a replica over the seeded session servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from replica import replica

from api.settings import Settings


@pytest.fixture(scope="module")
def client(settings: Settings, seeded: Any) -> Iterator[TestClient]:
    with replica(settings) as client:
        yield client
