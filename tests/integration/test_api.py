"""The API against real seeded Postgres and Redis, built the production way (create_app)."""

from __future__ import annotations

import random
import re

import pytest
from swagger_ui_bundle import swagger_ui_path

from core.contract import BOOKINGS, STUDENTS, Dataset

PROBLEM_TYPE = "application/problem+json"


def sample_ids(pg, dataset: Dataset, count: int) -> list:
    rows = pg.execute(f"SELECT {'id' if dataset is STUDENTS else 'id::text'} FROM {dataset.name}")
    ids = [row[0] for row in rows]
    return random.Random(7).sample(ids, count)


def rendered_from_postgres(pg, dataset: Dataset, record_id) -> bytes:
    row = pg.execute(dataset.select_one, (record_id,)).fetchone()
    assert row is not None
    return dataset.render(row)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_TYPE)
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize("dataset", [STUDENTS, BOOKINGS], ids=lambda d: d.name)
def test_postgres_render_equals_redis_bytes_equals_fallback(client, pg, rds, dataset):
    for record_id in sample_ids(pg, dataset, 25):
        from_postgres = rendered_from_postgres(pg, dataset, record_id)
        key, field = dataset.live_slot(rds, record_id)
        assert rds.hget(key, field) == from_postgres

        hit = client.get(f"/{dataset.name}/{record_id}")
        assert hit.status_code == 200
        assert hit.headers["content-type"] == "application/json"
        assert hit.content == from_postgres

        # Miss: the record is read from Postgres, served the same, and written back.
        assert rds.hdel(key, field) == 1
        fallback = client.get(f"/{dataset.name}/{record_id}")
        assert fallback.status_code == 200
        assert fallback.content == from_postgres
        assert rds.hget(key, field) == from_postgres


def test_booking_ids_are_case_insensitive(client, pg):
    (booking_id,) = sample_ids(pg, BOOKINGS, 1)
    upper = client.get(f"/bookings/{booking_id.upper()}")
    assert upper.status_code == 200
    assert upper.json()["id"] == booking_id


def test_booking_names_its_event_show_and_zone(client, pg):
    (booking_id,) = sample_ids(pg, BOOKINGS, 1)
    body = client.get(f"/bookings/{booking_id}").json()
    assert body["event"]["name"] and body["show"]["starts_at"] and body["zone"]["name"]
    assert body["zone"]["id"].startswith("b0000000-0000-")
    assert body["confirmation_code"].startswith("BK-")


@pytest.mark.parametrize(
    ("path", "absent_row"),
    [
        (
            "/students/{}",
            "INSERT INTO students SELECT {id}, full_name, sex, birth_date, school, "
            "region, stream, exam_year, total, max_total, passed FROM students LIMIT 1",
        ),
        ("/bookings/{}", None),
    ],
    ids=["student", "booking"],
)
def test_unknown_id_is_404_and_remembered(client, pg, path, absent_row):
    unknown = 900_000_000 if absent_row else "00000000-0000-4000-8000-000000000000"
    first = client.get(path.format(unknown))
    assert_problem(first, 404)
    if absent_row:
        # The record appears in Postgres, yet the API keeps answering from its negative cache:
        # proof that the second request did not reach Postgres.
        pg.execute(absent_row.format(id=unknown))
        try:
            pg.execute(
                "INSERT INTO student_scores SELECT %s, subject_id, score FROM student_scores "
                "WHERE student_id = (SELECT min(id) FROM students)",
                (unknown,),
            )
            assert_problem(client.get(path.format(unknown)), 404)
        finally:
            pg.execute("DELETE FROM students WHERE id = %s", (unknown,))
    else:
        assert_problem(client.get(path.format(unknown)), 404)


BAD_STUDENT_IDS = [
    "abc",
    "-1",
    "0",
    "+5",
    "007",
    "1_000",
    "%205",
    "5%20",
    "1e3",
    "0x10",
    "1.5",
    "1000000000",
    "2147483648",
    "99999999999999999999",
    "%D9%A1%D9%A2",  # Arabic-Indic digits
    "12%00",
]
BAD_BOOKING_IDS = [
    "xyz",
    "12345",
    "7d4c1a2e3b5f4c6d8e9f0a1b2c3d4e5f",  # no dashes
    "{7d4c1a2e-3b5f-4c6d-8e9f-0a1b2c3d4e5f}",
    "7d4c1a2e-3b5f-4c6d-8e9f-0a1b2c3d4e5g",
    "7d4c1a2e-3b5f-4c6d-8e9f-0a1b2c3d4e5f0",
    "urn:uuid:7d4c1a2e-3b5f-4c6d-8e9f-0a1b2c3d4e5f",
]


@pytest.mark.parametrize("raw", BAD_STUDENT_IDS)
def test_bad_student_id_is_400(client, raw):
    body = assert_problem(client.get(f"/students/{raw}"), 400)
    assert "student id" in body["detail"]


@pytest.mark.parametrize("raw", BAD_BOOKING_IDS)
def test_bad_booking_id_is_400(client, raw):
    body = assert_problem(client.get(f"/bookings/{raw}"), 400)
    assert "booking id" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/students", 404),
        ("GET", "/students/10000/extra", 404),
        ("GET", "/students/" + "1" * 5000, 400),
        ("GET", "/" + "a" * 5000, 404),
        ("POST", "/students/10000", 405),
        ("DELETE", "/bookings/7d4c1a2e-3b5f-4c6d-8e9f-0a1b2c3d4e5f", 405),
    ],
)
def test_other_bad_requests_get_the_error_shape(client, method, path, status):
    assert_problem(client.request(method, path), status)


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    components = {"redis": "up", "postgres": "up", "copy": "off"}  # the session's copy is off
    assert ready.json() == {"status": "ready", "components": components}


def test_openapi_schema_and_docs_page(client):
    schema = client.get("/docs/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/students/{record_id}", "/bookings/{record_id}", "/health", "/ready"} <= set(paths)
    page = client.get("/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]


def test_head_is_answered_like_get_without_a_body(client):
    get = client.get("/students/10000")
    head = client.head("/students/10000")
    assert head.status_code == 200
    assert head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == str(len(get.content))
    assert head.content == b""
    assert client.head("/ready").status_code == 200


def test_docs_page_references_nothing_outside_the_service(client):
    """Swagger UI (5.x, from the pinned package) and its favicon are served by the replica: the
    page works on a network with no way out."""
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert len(refs) >= 4, refs  # favicon, stylesheet, two scripts
    for ref in refs:
        assert ref.startswith("/docs/assets/"), ref
        asset = client.get(ref)
        assert asset.status_code == 200 and asset.content, ref
    major = int(swagger_ui_path.name.removeprefix("swagger-ui-").split(".")[0])
    assert major >= 5  # OpenAPI 3.1 needs Swagger UI 5
