"""Admin routes: absent without a token, 401 without the right one, and what they do with it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient
from replica import replica

from api.app import create_app
from core.contract import DATASETS, STUDENTS
from seeder.redis_fill import live_version

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM_TYPE = "application/problem+json"


@pytest.fixture(scope="module")
def client(settings, seeded) -> Iterator[TestClient]:
    """The admin routes exist only with a token: this module's replica has one."""
    with replica(settings, admin_token=TOKEN) as client:
        yield client


ADMIN_REQUESTS = [
    ("GET", "/admin/cache"),
    ("POST", "/admin/reseed"),
    ("POST", "/admin/students/10000/refresh"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_REQUESTS)
def test_absent_without_a_configured_token(settings, seeded, method, path):
    with TestClient(app=create_app(settings)) as plain:
        response = plain.request(method, path, headers=AUTH)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith(PROBLEM_TYPE)


@pytest.mark.parametrize(("method", "path"), ADMIN_REQUESTS)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        TOKEN,
        f"Basic {TOKEN}",
        "Bearer ü".encode("latin-1"),
    ],
)
def test_refused_without_the_right_token(client, method, path, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith(PROBLEM_TYPE)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401
    assert TOKEN not in response.text


def test_left_out_of_the_public_schema(client):
    assert not [p for p in client.get("/docs/openapi.json").json()["paths"] if "admin" in p]


def test_cache_view(client, settings, rds):
    response = client.get("/admin/cache", headers=AUTH)
    assert response.status_code == 200
    view = response.json()
    for dataset in DATASETS:
        entry = view["datasets"][dataset.name]
        rows = getattr(settings.dataset, dataset.name)
        assert entry["postgres_rows"] == entry["redis_records"] == rows
        assert entry["postgres_seed"] == settings.dataset.seed
        assert entry["live_version"] == live_version(rds, dataset) > 0
        assert entry["in_sync"] is True
        assert entry["switched_at"] and entry["postgres_loaded_at"]
    assert view["reseed"]["running"] is False


def test_refresh_pushes_a_correction_and_forgets_unknown_ids(client, pg, rds):
    student = 10_042
    original = client.get(f"/students/{student}").json()
    pg.execute("UPDATE students SET full_name = 'Corrected Name' WHERE id = %s", (student,))
    try:
        assert client.get(f"/students/{student}").json() == original  # still the cached one
        response = client.post(f"/admin/students/{student}/refresh", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "dataset": "students",
            "id": str(student),
            "version": live_version(rds, STUDENTS),
            "action": "updated",
        }
        assert client.get(f"/students/{student}").json() == original | {"name": "Corrected Name"}
    finally:
        pg.execute("UPDATE students SET full_name = %s WHERE id = %s", (original["name"], student))
        client.post(f"/admin/students/{student}/refresh", headers=AUTH)
    assert client.get(f"/students/{student}").json() == original

    # A record added after it was asked for: remembered as unknown until refreshed.
    added = 999_999_001
    assert client.get(f"/students/{added}").status_code == 404
    pg.execute(
        "INSERT INTO students SELECT %s, full_name, sex, birth_date, school, region, stream, "
        "exam_year, total, max_total, passed FROM students WHERE id = %s",
        (added, student),
    )
    try:
        assert client.get(f"/students/{added}").status_code == 404  # negative cache
        assert client.post(f"/admin/students/{added}/refresh", headers=AUTH).status_code == 200
        assert client.get(f"/students/{added}").json()["id"] == added
    finally:
        pg.execute("DELETE FROM students WHERE id = %s", (added,))
    deleted = client.post(f"/admin/students/{added}/refresh", headers=AUTH)
    assert deleted.json()["action"] == "deleted"
    assert rds.hget(*STUDENTS.live_slot(rds, added)) is None


@pytest.mark.parametrize(
    ("path", "status"),
    [("/admin/nope/10000/refresh", 404), ("/admin/students/abc/refresh", 400)],
)
def test_refresh_of_a_bad_target(client, path, status):
    response = client.post(path, headers=AUTH)
    assert response.status_code == status
    assert response.headers["content-type"].startswith(PROBLEM_TYPE)


def test_reseed_without_a_seeder_says_so(client, monkeypatch):
    # The API's image has no seeder package (Dockerfile): the route says so instead of
    # starting a child that cannot import it.
    monkeypatch.setattr("api.admin.seeder_installed", lambda: False)
    refused = client.post("/admin/reseed", headers=AUTH)
    assert refused.status_code == 501
    assert refused.headers["content-type"].startswith(PROBLEM_TYPE)
    assert "no seeder" in refused.json()["detail"]


def test_reseed_runs_the_seeder_once_at_a_time(client, rds):
    versions = {d.name: live_version(rds, d) for d in DATASETS}
    started = client.post("/admin/reseed", params={"reset": "true"}, headers=AUTH)
    assert started.status_code == 202, started.text
    assert started.headers["location"] == "/admin/cache"
    assert started.json()["running"] is True
    again = client.post("/admin/reseed", headers=AUTH)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith(PROBLEM_TYPE)

    deadline = time.monotonic() + 120
    while (view := client.get("/admin/cache", headers=AUTH).json())["reseed"]["running"]:
        assert time.monotonic() < deadline, "reseed did not finish"
        time.sleep(0.1)
    assert view["reseed"]["exit_code"] == 0, Path(view["reseed"]["log"]).read_text()
    for dataset in DATASETS:
        entry = view["datasets"][dataset.name]
        assert entry["in_sync"] is True
        assert entry["live_version"] > versions[dataset.name]  # --reset: a new version
