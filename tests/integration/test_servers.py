"""stack.servers: real Postgres and Redis processes start, answer, stop and come back."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
import redis

from core.contract.dataset import REDIS_HASH_CONFIG
from stack.servers import (
    PortInUse,
    PostgresServer,
    RedisServer,
    free_port,
    pid_alive,
    port_is_free,
    wait_for,
)


def test_session_servers_answer_on_their_urls(postgres_server, redis_server):
    with psycopg.connect(postgres_server.url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), current_setting('listen_addresses')"
        ).fetchone()
    assert row == ("surge", "surge", "127.0.0.1")

    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        config = client.config_get("*")
    finally:
        client.close()
    for key, value in REDIS_HASH_CONFIG.items():
        assert config[key] == value
    assert (config["bind"], config["save"], config["appendonly"]) == ("127.0.0.1", "", "no")


def test_redis_restarts_on_the_same_port(server_dir):
    server = RedisServer(server_dir / "redis", free_port())
    try:
        server.start()
        first_pid = server.pid
        assert server.start().pid == first_pid  # start() on a running server is a no-op
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.set("probe", "1")

        server.stop()
        assert not server.running
        assert not pid_alive(first_pid)
        assert port_is_free(server.port)
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.stop()  # idempotent

        server.start()
        assert server.pid != first_pid
        assert client.ping()
        assert client.get("probe") is None  # no persistence: a restart comes back empty
        client.close()
    finally:
        server.stop()


def test_persistent_redis_keeps_its_data_across_a_restart(server_dir):
    server = RedisServer(server_dir / "redis", free_port(), persist=True)
    try:
        server.start()
        client = redis.Redis.from_url(server.url)
        client.hset("h", "f", "v")
        server.stop()  # SHUTDOWN SAVE
        server.start()
        assert client.hget("h", "f") == b"v"
        client.close()
    finally:
        server.stop()


def test_postgres_restarts_on_the_same_port_with_its_data(server_dir):
    server = PostgresServer(server_dir / "pg", free_port(), server_dir / "s", durable=False)
    try:
        server.start()
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (42)")
        first_pid = server.pid

        server.stop()
        assert not server.running
        assert not pid_alive(first_pid)
        assert port_is_free(server.port)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.url, connect_timeout=2)
        server.stop()  # idempotent

        server.start()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT x FROM t").fetchone() == (42,)
        assert (server_dir / "s" / f".s.PGSQL.{server.port}").exists()
    finally:
        server.stop()


def test_a_taken_port_is_reported_clearly(server_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port}"):
            RedisServer(server_dir / "redis", port).start()


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from stack.servers import PostgresServer, RedisServer, free_port
    d = sys.argv[1]
    pg = PostgresServer(d + "/pg", free_port(), durable=False).start()
    rd = RedisServer(d + "/redis", free_port()).start()
    print(pg.pid, rd.pid, flush=True)
    if sys.argv[2] == "hang":
        time.sleep(600)
    """
)


@pytest.mark.parametrize("ending", ["exit", "hang"])
def test_attached_servers_do_not_outlive_their_process(server_dir: Path, ending: str):
    """Normal exit: atexit stops them. Killed outright: the kernel's parent-death signal does."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(server_dir), ending], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2
        if ending == "hang":
            assert all(pid_alive(p) for p in pids)
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) in (0, -signal.SIGKILL)
        wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=30, what="servers to end")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_free_port_is_bindable():
    port = free_port()
    started = time.monotonic()
    assert port_is_free(port)
    assert time.monotonic() - started < 1
