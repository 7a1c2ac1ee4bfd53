"""Settings: one object per concern parsed from the SURGE_* environment, the defaults every
launcher and document relies on, clear refusals of bad values, and production refusing the local
default credentials."""

from __future__ import annotations

import dataclasses

import pytest

from api.app import create_app
from core.settings import (
    CONCERNS,
    SERVICE_CONCERNS,
    ApiSettings,
    DatasetSettings,
    SeederSettings,
    Settings,
    StackSettings,
    StoreSettings,
    env_name,
    env_names,
    from_env,
)

# Every variable's default as the single settings class had them, and as the local stack
# (Layout, stack.nginx.DEFAULTS, the launcher) read them: no default moved with the split.
DEFAULTS = {
    "SURGE_ENVIRONMENT": "development",
    # stores
    "SURGE_DATABASE_URL": "postgresql://surge:surge@127.0.0.1:5432/surge",
    "SURGE_DATABASE_READ_URL": "",
    "SURGE_REDIS_URL": "redis://127.0.0.1:6379/0",
    "SURGE_REDIS_MODE": "single",
    "SURGE_REDIS_NODES": 3,
    "SURGE_REDIS_TIMEOUT": 0.1,
    "SURGE_REDIS_POOL_SIZE": 256,
    "SURGE_REDIS_BREAKER_FAILURES": 3,
    "SURGE_REDIS_BREAKER_COOLDOWN": 2.0,
    "SURGE_STANDBY_REPLAY_TIMEOUT": 60.0,
    # dataset
    "SURGE_STUDENTS": 664_824,
    "SURGE_BOOKINGS": 500_000,
    "SURGE_SEED": 2026,
    # read path
    "SURGE_PG_POOL_MIN": 2,
    "SURGE_PG_POOL_MAX": 8,
    "SURGE_PG_WAIT_TIMEOUT": 0.5,
    "SURGE_PG_MAX_WAITING": 256,
    "SURGE_PG_STATEMENT_TIMEOUT_MS": 2000,
    "SURGE_PG_CONNECT_TIMEOUT": 2,
    "SURGE_LIVE_REFRESH_INTERVAL": 0.5,
    "SURGE_ADMIN_TOKEN": "",
    "SURGE_LOCAL_CACHE_MB": 1024,
    "SURGE_HTTP_MAX_AGE": 5,
    "SURGE_HTTP_STALE_IF_ERROR": 300,
    "SURGE_NEGATIVE_CACHE_TTL": 30.0,
    "SURGE_NEGATIVE_CACHE_SIZE": 100_000,
    "SURGE_RETRY_AFTER": 1,
    "SURGE_METRICS": True,
    # seeder
    "SURGE_RESEED_GRACE": 2.0,
    "SURGE_REFILL_RATE": 40_000,
    # local stack
    "SURGE_RUN_DIR": "",
    "SURGE_REPLICAS": None,
    "SURGE_MONITORING": True,
    "SURGE_POSTGRES_STANDBY": False,
    "SURGE_REDIS_MAXMEMORY": "3gb",
    "SURGE_PROMETHEUS_RETENTION": "7d",
    "SURGE_HTTP_PORT": 8080,
    "SURGE_NGINX_STATUS_PORT": 8081,
    "SURGE_PROMETHEUS_PORT": 9090,
    "SURGE_PG_PORT": 5432,
    "SURGE_PG_STANDBY_PORT": 5433,
    "SURGE_REDIS_PORT": 6379,
    "SURGE_API_PORT_BASE": 8000,
    "SURGE_NODE_EXPORTER_PORT": 9100,
    "SURGE_NGINX_EXPORTER_PORT": 9113,
    "SURGE_REDIS_EXPORTER_PORT": 9121,
    "SURGE_POSTGRES_EXPORTER_PORT": 9187,
    "SURGE_MTAIL_PORT": 3903,
    "SURGE_NGINX_WORKERS": "1",
    "SURGE_NGINX_READ_TIMEOUT": "5s",
    "SURGE_NGINX_ACCESS_LOG": "off",
    "SURGE_NGINX_MICROCACHE": "off",
    "SURGE_RATE_LIMIT": "on",
    "SURGE_RATE_LIMIT_RATE": "20r/s",
    "SURGE_RATE_LIMIT_BURST": 40,
    "SURGE_NGINX_MAX_INFLIGHT": 256,
    "SURGE_NGINX_SPILL_AT": 24,
    "SURGE_NGINX_BIN": "",
    "SURGE_PG_BIN": "",
    "SURGE_REDIS_SERVER": "",
}


def flattened(settings: Settings) -> dict[str, object]:
    out: dict[str, object] = {env_name("environment"): settings.environment}
    for attr, concern in CONCERNS.items():
        part = getattr(settings, attr)
        assert isinstance(part, concern)
        out |= {env_name(f.name): getattr(part, f.name) for f in dataclasses.fields(part)}
    return out


# ---------------------------------------------------------------------------------------------
# parsing


def test_defaults_are_unchanged_and_every_variable_has_one_concern():
    assert flattened(Settings.from_env({})) == DEFAULTS
    assert flattened(Settings()) == DEFAULTS
    names = [f.name for concern in CONCERNS.values() for f in dataclasses.fields(concern)]
    assert len(names) == len(set(names)), "a field name (a variable) in two concerns"
    assert env_names() == set(DEFAULTS)


def test_each_concern_reads_its_own_variables():
    s = Settings.from_env(
        {
            "SURGE_ENVIRONMENT": "staging",
            "SURGE_REDIS_URL": "redis://cache:6379/1",
            "SURGE_STANDBY_REPLAY_TIMEOUT": "5",
            "SURGE_SEED": "7",
            "SURGE_NEGATIVE_CACHE_TTL": "1.5",
            "SURGE_ADMIN_TOKEN": "t",
            "SURGE_REFILL_RATE": "0",
            "SURGE_HTTP_PORT": "18080",
            "SURGE_REPLICAS": "3",
            "SURGE_RATE_LIMIT": "off",
            "SURGE_POSTGRES_STANDBY": "1",
        }
    )
    assert s.environment == "staging"
    assert (s.stores.redis_url, s.stores.standby_replay_timeout) == ("redis://cache:6379/1", 5.0)
    assert s.dataset == DatasetSettings(seed=7)
    assert (s.api.negative_cache_ttl, s.api.admin_token) == (1.5, "t")
    assert s.seeder == SeederSettings(refill_rate=0)
    assert (s.stack.http_port, s.stack.replicas, s.stack.rate_limit) == (18080, 3, "off")
    assert s.stack.postgres_standby is True


def test_one_concern_parses_alone():
    # The stack's launcher reads only its own knobs: another concern's bad value is not its.
    env = {"SURGE_STUDENTS": "many", "SURGE_HTTP_PORT": "18080"}
    assert from_env(StackSettings, env).http_port == 18080
    assert from_env(ApiSettings, {"SURGE_METRICS": "off"}) == ApiSettings(metrics=False)
    assert from_env(StoreSettings, {}) == StoreSettings()
    with pytest.raises(ValueError, match="SURGE_STUDENTS"):
        from_env(DatasetSettings, env)


def test_parsing_rules():
    s = Settings.from_env(
        {
            "SURGE_STUDENTS": "1_000",  # underscores, as the docs write figures
            "SURGE_REDIS_TIMEOUT": " 0.2 ",
            "SURGE_METRICS": "OFF",
            "SURGE_MONITORING": "no",
            "SURGE_BOOKINGS": "",  # empty: the default
            "SURGE_NGINX_READ_TIMEOUT": "7s",
        }
    )
    assert (s.dataset.students, s.stores.redis_timeout, s.api.metrics) == (1000, 0.2, False)
    assert (s.stack.monitoring, s.dataset.bookings) == (False, 500_000)
    assert s.stack.nginx_read_timeout == "7s"
    for word, value in [("1", True), ("true", True), ("yes", True), ("on", True), ("0", False)]:
        assert from_env(ApiSettings, {"SURGE_METRICS": word}).metrics is value


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("SURGE_METRICS", "maybe", r"SURGE_METRICS must be one of \[.*'on'.*\], not 'maybe'"),
        ("SURGE_STUDENTS", "many", "SURGE_STUDENTS must be a whole number, not 'many'"),
        ("SURGE_REDIS_TIMEOUT", "fast", "SURGE_REDIS_TIMEOUT must be a number, not 'fast'"),
        ("SURGE_REPLICAS", "2.5", "SURGE_REPLICAS must be a whole number, not '2.5'"),
        ("SURGE_PROMETHEUS_PORT", "90x", "SURGE_PROMETHEUS_PORT must be a whole number"),
        ("SURGE_HTTP_PORT", "70000", "SURGE_HTTP_PORT must be a TCP port number, not 70000"),
    ],
)
def test_a_bad_value_is_refused_with_its_variable_named(variable, raw, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env({variable: raw})


# ---------------------------------------------------------------------------------------------
# changing and passing on


def test_replace_sends_each_field_to_its_concern():
    s = Settings().replace(seed=9, redis_url="redis://x:1/0", metrics=False, environment="prod")
    assert (s.dataset.seed, s.stores.redis_url, s.api.metrics) == (9, "redis://x:1/0", False)
    assert s.environment == "prod"
    assert (s.seeder, s.stack) == (SeederSettings(), StackSettings())
    assert Settings.from_env({}, seed=9) == Settings().replace(seed=9)
    with pytest.raises(TypeError, match="no such setting"):
        Settings().replace(sed=9)


def test_as_env_gives_the_same_settings_back():
    s = Settings().replace(students=12, admin_token="t", metrics=False, replicas=3, http_port=1)
    assert Settings.from_env(s.as_env(stack=True)) == s
    # A child process of the API or the seeder gets theirs, not the launcher's knobs.
    assert set(s.as_env()) == env_names(*SERVICE_CONCERNS)
    assert Settings.from_env(s.as_env()) == dataclasses.replace(s, stack=StackSettings())


# ---------------------------------------------------------------------------------------------
# production


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
    assert from_env(StoreSettings, {}).standby_url == ""
    assert from_env(StoreSettings, {"SURGE_DATABASE_READ_URL": ""}).standby_url == ""
    same = {"SURGE_DATABASE_URL": primary, "SURGE_DATABASE_READ_URL": primary}
    assert from_env(StoreSettings, same).standby_url == ""
    other = {"SURGE_DATABASE_URL": primary, "SURGE_DATABASE_READ_URL": standby}
    assert from_env(StoreSettings, other).standby_url == standby


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
    assert Settings.from_env({}).stores.redis_mode == "single"
    assert not Settings.from_env({}).stores.cluster
    s = Settings.from_env({"SURGE_REDIS_MODE": "cluster", "SURGE_REDIS_NODES": "4"}).stores
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
