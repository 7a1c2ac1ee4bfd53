"""Real Postgres and Redis for the test session, started from stack.servers on free ports.

- `postgres_server`, `redis_server` (session): real server processes in a temp dir, stopped at the
  end of the session (and by stack.servers if the run dies). Objects with .url, .port, .stop(),
  .start(); a test may stop one to simulate an outage and start it again on the same port.
- `settings` (session): core.settings.Settings pointing at them, with a small dataset.
- `seeded` (session): the seeder's report, run once against those servers.
- A test that leaves a server stopped does not break the ones after it: before and after every
  test, a stopped session server is started again (and Redis, which restarts empty, is reseeded
  when the session had seeded it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core.settings import Settings
from stack.servers import PostgresServer, RedisServer, free_port

TEST_STUDENTS = 2_000
TEST_BOOKINGS = 1_000


def make_server_dir(prefix: str) -> Path:
    """A fresh directory under the system temp dir that the postgres user can enter.

    Not pytest's tmp_path: that lives under a root-only (0700) directory, and when the tests run
    as root Postgres runs as the `postgres` user. Short paths also keep Unix socket names legal.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A scratch directory for a test's own servers, removed afterwards."""
    path = make_server_dir("surge-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class _Session:
    """Session servers started so far, and what the revival needs to know."""

    servers: ClassVar[dict[str, PostgresServer | RedisServer]] = {}
    settings: Settings | None = None
    seeded: bool = False


@pytest.fixture(scope="session")
def _session_dir() -> Iterator[Path]:
    path = make_server_dir("surge-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(_session_dir: Path) -> Iterator[PostgresServer]:
    # durable=False: fsync off, for a throwaway cluster.
    server = PostgresServer(
        _session_dir / "pg", free_port(), _session_dir / "sock", durable=False
    ).start()
    _Session.servers["postgres"] = server
    yield server
    del _Session.servers["postgres"]
    server.stop()


@pytest.fixture(scope="session")
def redis_server(_session_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(_session_dir / "redis", free_port()).start()
    _Session.servers["redis"] = server
    yield server
    del _Session.servers["redis"]
    server.stop()


@pytest.fixture(scope="session")
def settings(postgres_server: PostgresServer, redis_server: RedisServer) -> Settings:
    # Only the URLs and the small dataset: the developer's SURGE_* variables must not leak in.
    s = Settings.from_env(
        {},
        database_url=postgres_server.url,
        redis_url=redis_server.url,
        students=TEST_STUDENTS,
        bookings=TEST_BOOKINGS,
        # Still above 2 x the 0.5 s version refresh + the Redis timeout, as in production; the
        # default 2 s would only make every reseed in the suite slower.
        reseed_grace=1.2,
        # The store paths (Redis, Postgres, write-back) are what most tests exercise; the
        # replica's own copy answers before them, so tests of it turn it on (test_local_copy).
        local_cache_mb=0,
    )
    _Session.settings = s
    return s


@pytest.fixture(scope="session")
def seeded(settings: Settings) -> Any:
    """The seeder's report; the stores hold the small dataset from here on."""
    from seeder import seed

    report = seed(settings)
    _Session.seeded = True
    return report


def _stopped_servers() -> list[str]:
    """Session servers that are not running; each is started again (and Redis reseeded, as it
    comes back empty), so that one test's failure does not become every next test's."""
    stopped = []
    for name, server in list(_Session.servers.items()):
        if server.running:
            continue
        stopped.append(name)
        server.start()
        if name == "redis" and _Session.seeded and _Session.settings is not None:
            from seeder import seed

            seed(_Session.settings)
    return stopped


@pytest.fixture(autouse=True)
def _session_servers_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves a session server stopped fails (the server is started again for
    the tests after it)."""
    yield
    stopped = _stopped_servers()
    if stopped:
        pytest.fail(f"{request.node.nodeid} left {', '.join(stopped)} stopped", pytrace=False)


def pytest_report_header(config: pytest.Config) -> str:
    who = "root (Postgres runs as the postgres user)" if os.geteuid() == 0 else "a normal user"
    return f"surge: real Postgres and Redis from stack.servers, running as {who}"


@pytest.fixture(scope="session")
def api_url(settings: Settings, seeded: Any) -> Iterator[str]:
    """One real API replica (Granian, as `make up` runs it) over the seeded session servers."""
    import subprocess
    import urllib.request

    from stack.servers import granian_command, wait_for

    port = free_port()
    env = {
        **os.environ,
        "SURGE_DATABASE_URL": settings.stores.database_url,
        "SURGE_REDIS_URL": settings.stores.redis_url,
        "SURGE_STUDENTS": str(settings.dataset.students),
        "SURGE_BOOKINGS": str(settings.dataset.bookings),
    }
    cmd = granian_command("api.app:create_app", port, settings.stores.redis_pool_size)
    root = Path(__file__).resolve().parents[1]
    replica = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="API replica", alive=lambda: replica.poll() is None)
        yield url
    finally:
        replica.terminate()
        replica.wait(timeout=30)


@pytest.fixture
def pg(settings: Settings) -> Iterator[Any]:
    """A psycopg connection to the session's Postgres (autocommit)."""
    import psycopg

    with psycopg.connect(settings.stores.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def rds(settings: Settings) -> Iterator[Any]:
    """A redis-py client of the session's Redis."""
    import redis

    client = redis.Redis.from_url(settings.stores.redis_url)
    yield client
    client.close()


@pytest.fixture
def restore(settings: Settings) -> Iterator[None]:
    """Leave the stores holding the session's dataset, whatever the test did to them."""
    from seeder import seed

    yield
    seed(settings)
