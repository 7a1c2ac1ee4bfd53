"""Settings: environment parsing, and production refusing the local default credentials."""

from __future__ import annotations

import pytest

from api.app import create_app
from api.settings import Settings


def test_values_come_from_the_environment():
    s = Settings.from_env(
        {"SURGE_STUDENTS": "1_000", "SURGE_REDIS_TIMEOUT": "0.2", "SURGE_METRICS": "off"}
    )
    assert (s.students, s.redis_timeout, s.metrics) == (1000, 0.2, False)


def test_a_bad_boolean_is_refused():
    with pytest.raises(ValueError):
        Settings.from_env({"SURGE_METRICS": "maybe"})


def test_development_accepts_the_defaults():
    assert Settings.from_env({}).production_problems() == []


def test_production_refuses_default_credentials():
    s = Settings.from_env({"SURGE_ENVIRONMENT": "production"})
    problems = s.production_problems()
    assert any("SURGE_DATABASE_URL" in p for p in problems)
    assert any("SURGE_REDIS_URL" in p for p in problems)
    with pytest.raises(RuntimeError, match="refusing to start in production"):
        create_app(s)


def test_production_accepts_real_credentials():
    s = Settings.from_env(
        {
            "SURGE_ENVIRONMENT": "production",
            "SURGE_DATABASE_URL": "postgresql://surge:s3cret-long@db:5432/surge",
            "SURGE_REDIS_URL": "redis://:an0ther-s3cret@cache:6379/0",
        }
    )
    assert s.production_problems() == []


def test_fallback_reads_use_the_primary_unless_a_standby_is_named():
    primary = "postgresql://surge:surge@db:5432/surge"
    standby = "postgresql://surge:surge@db-standby:5432/surge"
    assert Settings.from_env({}).standby_url == ""
    assert Settings.from_env({"SURGE_DATABASE_READ_URL": ""}).standby_url == ""
    same = {"SURGE_DATABASE_URL": primary, "SURGE_DATABASE_READ_URL": primary}
    assert Settings.from_env(same).standby_url == ""
    other = {"SURGE_DATABASE_URL": primary, "SURGE_DATABASE_READ_URL": standby}
    assert Settings.from_env(other).standby_url == standby


def test_production_refuses_a_standby_with_the_default_password():
    env = {
        "SURGE_ENVIRONMENT": "production",
        "SURGE_DATABASE_URL": "postgresql://surge:s3cret-long@db:5432/surge",
        "SURGE_REDIS_URL": "redis://:an0ther-s3cret@cache:6379/0",
        "SURGE_DATABASE_READ_URL": "postgresql://surge:surge@db-standby:5432/surge",
    }
    problems = Settings.from_env(env).production_problems()
    assert problems == ["SURGE_DATABASE_READ_URL needs a password of its own"]
    env["SURGE_DATABASE_READ_URL"] = "postgresql://surge:s3cret-long@db-standby:5432/surge"
    assert Settings.from_env(env).production_problems() == []


def test_redis_mode_defaults_to_single_and_takes_cluster():
    assert Settings.from_env({}).redis_mode == "single"
    assert not Settings.from_env({}).cluster
    s = Settings.from_env({"SURGE_REDIS_MODE": "cluster", "SURGE_REDIS_NODES": "4"})
    assert (s.redis_mode, s.redis_nodes, s.cluster) == ("cluster", 4, True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SURGE_REDIS_MODE": "sentinel"}, "SURGE_REDIS_MODE must be one of single, cluster"),
        ({"SURGE_REDIS_MODE": "Cluster"}, "SURGE_REDIS_MODE must be one of single, cluster"),
        ({"SURGE_REDIS_NODES": "2"}, "SURGE_REDIS_NODES must be 3 or more"),
    ],
)
def test_an_unknown_redis_mode_or_too_few_nodes_is_refused_by_name(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)
