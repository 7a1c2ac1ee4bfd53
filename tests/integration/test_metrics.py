"""/metrics: route templates (never raw ids), lookup outcomes, pool gauges; off when asked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import route_of

DOCUMENTED = (Path(__file__).parents[2] / "docs/metrics.md").read_text(encoding="utf-8")


def samples(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_labelled_by_route_template(client):
    before = samples(client)
    paths = ("/students/10000", "/students/10001", "/students/999999", "/nope/1", "/students/x")
    for path in paths:
        client.get(path)
    after = samples(client)
    route = "/students/{id}"
    delta = value(after, "surge_http_requests_total", route=route, method="GET", status="200") - (
        value(before, "surge_http_requests_total", route=route, method="GET", status="200")
    )
    assert delta == 2
    assert value(after, "surge_http_requests_total", route="other", method="GET", status="404") >= 1
    assert value(after, "surge_http_requests_total", route=route, method="GET", status="400") >= 1
    assert value(after, "surge_http_request_duration_seconds_count", route=route) >= 4
    for name, labels in after:
        route_label = dict(labels).get("route", "")
        assert not re.search(r"\d", route_label), (name, labels)


def test_lookup_outcomes_and_gauges(client):
    client.get("/students/900000000")  # unknown: not_found
    client.get("/students/900000000")  # remembered: negative_cache_hit
    client.get("/bookings/00000000-0000-4000-8000-000000000000")
    found = samples(client)
    for dataset, outcome in [
        ("students", "not_found"),
        ("students", "negative_cache_hit"),
        ("students", "redis_hit"),
        ("bookings", "not_found"),
    ]:
        assert value(found, "surge_lookups_total", dataset=dataset, outcome=outcome) >= 1
    assert value(found, "surge_redis_pool_max") > 0
    assert value(found, "surge_postgres_pool_max") > 0
    assert value(found, "surge_redis_circuit_open") == 0
    assert value(found, "surge_negative_cache_entries") >= 2
    assert value(found, "surge_store_call_duration_seconds_count", store="redis", operation="hget")
    assert value(found, "process_resident_memory_bytes") > 0


def test_every_exported_metric_is_documented(client):
    found = samples(client)
    names = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name, _ in found}
    undocumented = sorted(n for n in names if f"`{n}" not in DOCUMENTED)
    assert not undocumented


def test_metrics_off(settings, seeded):
    with TestClient(app=create_app(settings.replace(metrics=False))) as client:
        assert client.get("/students/10000").status_code == 200
        response = client.get("/metrics")
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("path", "route"),
    [("/students/5", "/students/{id}"), ("/bookings/x", "/bookings/{id}"), ("/", "other"),
     ("/health", "/health"), ("/docs/openapi.json", "/docs"), ("/a/b/c", "other"), ("", "other")],
)  # fmt: skip
def test_route_of(path, route):
    assert route_of(path) == route
