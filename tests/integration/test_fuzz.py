"""Property-based fuzzing of a real replica against its own OpenAPI schema (tests/schema_fuzz.py).
The same fuzzing through nginx, on the whole local stack, is in tests/test_faults_under_load.py."""

from __future__ import annotations

from schema_fuzz import assert_conforms


def test_api_conforms_to_its_schema(api_url, tmp_path):
    assert_conforms(api_url, tmp_path)
