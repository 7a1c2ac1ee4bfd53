"""An API replica in-process (Litestar's TestClient), built the production way (create_app)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.testing import TestClient
from polling import poll

from api.app import create_app
from core.settings import Settings


@contextmanager
def replica(settings: Settings, **changes: Any) -> Iterator[TestClient]:
    """An app over `settings` with `changes`, its own copy (when on) warmed before use."""
    app = create_app(settings.replace(**changes))
    with TestClient(app=app) as client:
        lookup = app.state.lookup
        poll(lambda: all(t.done() for t in lookup._warmers.values()), 10, "warm-up")
        yield client
