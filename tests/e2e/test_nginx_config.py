"""nginx/nginx.conf.template, rendered for the local launcher and run by the real nginx.

Each config runs a real nginx (stack.nginx.NginxServer) in front of small real HTTP upstreams
started here on 127.0.0.1: live ones answering JSON like the API, a dead port (connection
refused) and a hung one (accepts, never answers). Loopback only; every loop is bounded; waits
poll with a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stack.nginx import (
    DEFAULTS,
    LAYOUT,
    SERVER_PARAMS,
    SPILL_AT,
    TEMPLATE,
    NginxServer,
    local_values,
    placeholders,
    render_nginx_conf,
    upstream_servers,
)

HOST = "127.0.0.1"
SLOW_SECONDS = 3.0
PROBLEM = "application/problem+json"
TEMPLATE_TEXT = TEMPLATE.read_text(encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# upstreams


class Replica(ThreadingHTTPServer):
    """A stand-in API replica: answers like the API (JSON records, problem+json errors)."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__((HOST, 0), _ReplicaHandler)
        self.name = name
        self.hits: Counter[str] = Counter()
        self.connections: set[int] = set()
        self.connection_headers: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ReplicaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Granian
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait
    server: Replica

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        with self.server.lock:
            self.server.hits[path] += 1
            self.server.connections.add(self.client_address[1])
            self.server.connection_headers[self.headers.get("Connection", "")] += 1
        if path.endswith("/404"):
            body = b'{"status":404,"title":"Not Found","detail":"No student with this id."}'
            self._send(404, body, PROBLEM)
        elif path.endswith("/503"):
            body = json.dumps(
                {"status": 503, "title": "Service Unavailable", "detail": self.server.name}
            ).encode()
            self._send(503, body, PROBLEM, {"Retry-After": "1"})
        elif path.endswith("/slow"):
            time.sleep(SLOW_SECONDS)  # a request that holds its admission slot
            self._send(200, b'{"slow":true}', "application/json")
        elif path == "/metrics":
            self._send(200, b"replica_up 1\n", "text/plain; version=0.0.4")
        else:
            body = json.dumps({"path": path, "replica": self.server.name}).encode()
            self._send(200, body, "application/json")

    do_HEAD = do_GET


class Hung:
    """Accepts TCP connections (the kernel does) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def replica_a() -> Iterator[Replica]:
    r = Replica("a")
    yield r
    r.stop()


@pytest.fixture(scope="module")
def replica_b() -> Iterator[Replica]:
    r = Replica("b")
    yield r
    r.stop()


# ---------------------------------------------------------------------------------------------
# nginx


@pytest.fixture(scope="module")
def start_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NginxServer]]:
    """Start an nginx with the local-launcher values for these upstream ports (+ overrides)."""
    started: list[NginxServer] = []

    def start(upstream_ports: list[int], spill_at: int = SPILL_AT, **overrides: str) -> NginxServer:
        prefix = tmp_path_factory.mktemp("nginx")
        values = local_values(
            prefix,
            port=free_port(),
            status_port=free_port(),
            upstream_ports=upstream_ports,
            environ={"SURGE_NGINX_SPILL_AT": str(spill_at)},
            **{"SURGE_RATE_LIMIT": "off", **overrides},
        )
        server = NginxServer(prefix, values)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        assert not server.running


class Reply:
    def __init__(
        self, status: int, headers: dict[str, str], body: bytes, raw_headers: list[str] = ()
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.raw_headers = list(raw_headers)  # names in order, repeats kept (raw() only)

    def json(self) -> dict:
        return json.loads(self.body)


def request(server: NginxServer, path: str, method: str = "GET", **headers: str) -> Reply:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> Reply:
    """Send bytes as they are; read one response (headers, then Content-Length bytes)."""
    with socket.create_connection((HOST, port), timeout=10) as c:
        c.sendall(data)
        out = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in out and time.monotonic() < deadline:
            chunk = c.recv(65536)
            if not chunk:
                break
            out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers, names = {}, []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
            names.append(k.strip().lower())
        length = int(headers.get("content-length", "0"))
        while len(body) < length and time.monotonic() < deadline:
            chunk = c.recv(65536)
            if not chunk:
                break
            body += chunk
    return Reply(status, headers, body, names)


def port_of(server: NginxServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def assert_problem(reply: Reply, status: int) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["content-type"] == PROBLEM
    assert b"<html" not in reply.body.lower()
    body = reply.json()
    assert body["status"] == status
    assert set(body) == {"status", "title", "detail"}
    assert body["title"] and body["detail"]
    assert reply.headers["x-content-type-options"] == "nosniff"
    return body


# ---------------------------------------------------------------------------------------------
# the template itself


def test_placeholders_are_the_documented_ones() -> None:
    used = placeholders(TEMPLATE_TEXT)
    assert used == set(LAYOUT) | set(DEFAULTS)
    header = TEMPLATE_TEXT.split("\nworker_processes", 1)[0]
    for name in used:
        assert re.search(rf"^# {name}\s", header, re.M), f"{name} is not documented at the top"


def test_template_is_safe_for_both_renderers() -> None:
    # string.Template turns a double dollar into one; envsubst would not.
    assert "$$" not in TEMPLATE_TEXT
    # Every braced dollar is a SURGE_ placeholder; nginx variables are plain $name.
    assert re.findall(r"\$\{(?!SURGE_)", TEMPLATE_TEXT) == []
    nginx_vars = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", TEMPLATE_TEXT))
    # string.Template matches names case-insensitively: no nginx variable looks like one.
    assert not {v for v in nginx_vars if v.upper().startswith("SURGE") and v != v.upper()}
    assert {"binary_remote_addr", "status", "request_method"} <= nginx_vars


def envsubst_like_the_image(text: str, env: dict[str, str]) -> str:
    """What the nginx image's 20-envsubst-on-templates.sh does: envsubst restricted to the
    defined variables that match NGINX_ENVSUBST_FILTER (both $NAME and braced forms)."""
    names = [n for n in env if re.search("SURGE_", n)]
    shell_format = " ".join("${" + n + "}" for n in names)
    tool = shutil.which("envsubst")
    if tool:
        done = subprocess.run(
            [tool, shell_format],
            input=text,
            capture_output=True,
            text=True,
            env={**env, "PATH": os.environ.get("PATH", "")},
            check=True,
        )
        return done.stdout
    alternatives = "|".join(names)
    pattern = re.compile(rf"\$(?:\{{({alternatives})\}}|({alternatives})\b)")
    return pattern.sub(lambda m: env[m.group(1) or m.group(2)], text)


def test_python_render_equals_envsubst_render(tmp_path: Path) -> None:
    values = local_values(
        tmp_path, port=18080, status_port=18081, upstream_ports=[1, 2], environ={}
    )
    ours = render_nginx_conf(TEMPLATE, values)
    assert ours == envsubst_like_the_image(TEMPLATE_TEXT, values)
    assert "${" not in ours
    assert (
        f"server 127.0.0.1:1 {SERVER_PARAMS} max_conns={SPILL_AT}; "
        f"server 127.0.0.1:2 {SERVER_PARAMS} backup; server 127.0.0.1:1 {SERVER_PARAMS} backup;"
    ) in ours


def test_upstream_packs_light_load_on_the_first_replica() -> None:
    assert upstream_servers([1], HOST, 24) == f"server {HOST}:1 {SERVER_PARAMS};"
    assert upstream_servers([1, 2], HOST, 0) == (
        f"server {HOST}:1 {SERVER_PARAMS}; server {HOST}:2 {SERVER_PARAMS};"
    )
    three = upstream_servers([1, 2, 3], HOST, 8)
    assert three.split("; ") == [
        f"server {HOST}:1 {SERVER_PARAMS} max_conns=8",
        f"server {HOST}:2 {SERVER_PARAMS} backup",
        f"server {HOST}:3 {SERVER_PARAMS} backup",
        f"server {HOST}:1 {SERVER_PARAMS} backup;",
    ]
    with pytest.raises(ValueError):
        upstream_servers([], HOST)


def test_render_refuses_missing_and_foreign_values(tmp_path: Path) -> None:
    values = local_values(tmp_path, port=1, status_port=2, upstream_ports=[3], environ={})
    del values["SURGE_NGINX_UPSTREAM"]
    with pytest.raises(KeyError, match="SURGE_NGINX_UPSTREAM"):
        render_nginx_conf(TEMPLATE, values)
    with pytest.raises(ValueError, match="SURGE_"):
        render_nginx_conf(TEMPLATE, {**values, "status": "x"})


def test_knobs_come_from_the_environment(tmp_path: Path) -> None:
    values = local_values(
        tmp_path, port=1, status_port=2, upstream_ports=[3], environ={"SURGE_RATE_LIMIT": "off"}
    )
    assert values["SURGE_RATE_LIMIT"] == "off"
    assert values["SURGE_RATE_LIMIT_RATE"] == DEFAULTS["SURGE_RATE_LIMIT_RATE"]


def test_real_nginx_accepts_the_local_render(tmp_path: Path) -> None:
    values = local_values(tmp_path, port=free_port(), status_port=free_port(), upstream_ports=[1])
    report = NginxServer(tmp_path, values).check()
    assert "test is successful" in report


# ---------------------------------------------------------------------------------------------
# one live replica and one dead one


@pytest.fixture(scope="module")
def main(start_nginx, replica_a: Replica) -> NginxServer:
    return start_nginx([replica_a.port, free_port()])


def test_records_are_proxied_with_security_headers(main: NginxServer, replica_a) -> None:
    reply = request(main, "/students/10000")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"path": "/students/10000", "replica": "a"}
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["server"] == "nginx"  # server_tokens off: no version
    assert "x-cache-status" not in reply.headers  # micro-cache off by default
    assert request(main, "/bookings/AB12", "HEAD").status == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/docs", "/docs/openapi.json"])
def test_operational_routes_are_proxied(main: NginxServer, path: str) -> None:
    reply = request(main, path)
    assert reply.status == 200
    assert reply.json()["path"] == path


def test_api_errors_pass_through_untouched(main: NginxServer) -> None:
    reply = request(main, "/students/404")
    assert reply.status == 404
    assert reply.headers["content-type"] == PROBLEM
    assert reply.body == b'{"status":404,"title":"Not Found","detail":"No student with this id."}'


def test_metrics_are_not_public(main: NginxServer, replica_a: Replica) -> None:
    assert_problem(request(main, "/metrics"), 404)
    assert replica_a.hits["/metrics"] == 0


LONG_URI = b"GET /students/" + b"1" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
BIG_HEADER = b"GET /students/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
WITH_BODY = b"GET /students/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n" + b"a" * 2048

NGINX_ERRORS = [
    ("outside the API", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("no trailing slash", b"GET /students HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("internal error page", b"GET /_problem/502 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("POST", b"POST /students/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
    ("DELETE outside", b"DELETE /nope HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("OPTIONS", b"OPTIONS /students/1 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("TRACE", b"TRACE /students/1 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("garbage", b"GARBAGE\r\n\r\n", 400),
    ("no Host", b"GET /students/1 HTTP/1.1\r\n\r\n", 400),
    ("URI over 8k", LONG_URI, 414),
    ("header over 8k", BIG_HEADER, 431),
    ("body", WITH_BODY, 413),
    ("HTTP/9.9", b"GET /students/1 HTTP/9.9\r\nHost: x\r\n\r\n", 505),
]


@pytest.mark.parametrize(("what", "data", "status"), NGINX_ERRORS, ids=[e[0] for e in NGINX_ERRORS])
def test_nginx_errors_are_problem_json(main: NginxServer, what, data, status) -> None:
    reply = raw(port_of(main), data)
    assert_problem(reply, status)
    if status == 405:
        assert reply.headers["allow"] == "GET, HEAD"


def test_a_dead_replica_costs_no_client_error(main: NginxServer, replica_a: Replica) -> None:
    """200 GETs from 8 keep-alive clients: all 200, the dead replica is retried around."""
    host, port = HOST, port_of(main)
    before = replica_a.hits.total()
    conns_before = set(replica_a.connections)

    def client(worker: int) -> list[int]:
        conn = http.client.HTTPConnection(host, port, timeout=15)
        statuses = []
        try:
            for i in range(25):
                conn.request("GET", f"/students/{10_000 + worker * 100 + i}")
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
        finally:
            conn.close()
        return statuses

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for batch in pool.map(client, range(8)) for s in batch]
    assert Counter(statuses) == {200: 200}
    assert replica_a.hits.total() - before == 200
    # Keep-alive to the replica: 200 requests over a handful of pooled connections, and nginx
    # never asks the replica to close them.
    new_conns = replica_a.connections - conns_before
    assert len(new_conns) <= 16, len(new_conns)
    assert replica_a.connection_headers["close"] == 0


def test_stub_status_answers_on_its_own_port(main: NginxServer) -> None:
    host, port = main.status_url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/stub_status")
    resp = conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200
    assert text.startswith("Active connections:")
    assert "server accepts handled requests" in text
    conn.request("GET", "/students/1")
    resp = conn.getresponse()
    assert_problem(
        Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()), 404
    )
    conn.close()
    assert_problem(raw(int(port), b"GARBAGE\r\n\r\n"), 400)
    # ... and the public listener does not serve it.
    assert_problem(request(main, "/stub_status"), 404)


# ---------------------------------------------------------------------------------------------
# two live replicas


@pytest.fixture(scope="module")
def pair(start_nginx, replica_a: Replica, replica_b: Replica) -> NginxServer:
    """Two equal replicas (no spill cap: compose's least_conn over every replica), for the
    retry and failure rules; the local launcher's packing is test_stack_e2e's."""
    return start_nginx([replica_a.port, replica_b.port], spill_at=0)


def test_every_replica_gets_traffic(pair: NginxServer) -> None:
    def one(i: int) -> str:
        reply = request(pair, f"/students/{20_000 + i}")
        assert reply.status == 200
        return reply.json()["replica"]

    with ThreadPoolExecutor(8) as pool:
        served = Counter(pool.map(one, range(100)))
    assert set(served) == {"a", "b"}, served


def test_the_api_503_passes_untouched_and_takes_no_replica_out(pair, replica_a, replica_b) -> None:
    """The API's 503 (Postgres cannot serve a miss) is its answer: passed on as it is, not
    retried on the next replica (the cause is shared), and not counted as a failure of the
    replica: a burst of them once took every replica out, and nginx answered 502 for all."""
    before = replica_a.hits["/students/503"] + replica_b.hits["/students/503"]
    for _ in range(10):  # far above max_fails=3 per replica
        reply = request(pair, "/students/503")
        assert reply.status == 503
        assert reply.headers["content-type"] == PROBLEM
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["detail"] in {"a", "b"}  # the API's own body, untouched
    after = replica_a.hits["/students/503"] + replica_b.hits["/students/503"]
    assert after - before == 10  # one try each, no retry
    # nginx adds Retry-After to its own refusals only: the API's comes through alone
    head = raw(port_of(pair), b"GET /students/503 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.status == 503
    assert head.raw_headers.count("retry-after") == 1, head.raw_headers
    served = Counter(request(pair, f"/students/{30_000 + i}").json()["replica"] for i in range(20))
    assert set(served) == {"a", "b"}, served  # both still in


def test_admission_cap_refuses_the_excess_at_once_with_retry_after(start_nginx, replica_a) -> None:
    """SURGE_NGINX_MAX_INFLIGHT record requests in the replicas at once; the next ones get 503
    with Retry-After straight from nginx, without waiting behind the busy ones and without
    reaching a replica. The overload step of `make bench` measures it at three times capacity."""
    server = start_nginx([replica_a.port], SURGE_NGINX_MAX_INFLIGHT="2")
    before = replica_a.hits["/students/slow"]
    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(request, server, "/students/slow") for _ in range(2)]
        deadline = time.monotonic() + 5
        while replica_a.hits["/students/slow"] < before + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert replica_a.hits["/students/slow"] == before + 2  # both admitted, both held
        refused = [request(server, f"/students/{50_000 + i}") for i in range(5)]
        assert not any(f.done() for f in slow)  # answered while the slots were still taken
        health = request(server, "/health")  # operational routes are not capped
        assert all(f.result().status == 200 for f in slow)
    for reply in refused:
        body = assert_problem(reply, 503)
        assert "capacity" in body["detail"]
        assert reply.headers["retry-after"] == "1"
    assert sum(replica_a.hits[f"/students/{50_000 + i}"] for i in range(5)) == 0
    assert health.status == 200
    assert request(server, "/students/50000").status == 200  # slots free again


# ---------------------------------------------------------------------------------------------
# no replica can answer


def test_all_replicas_dead_is_502_json(start_nginx) -> None:
    server = start_nginx([free_port(), free_port()])
    assert_problem(request(server, "/students/1"), 502)
    assert_problem(request(server, "/ready"), 502)


def test_all_replicas_hung_is_504_json(start_nginx) -> None:
    hung = [Hung(), Hung()]
    try:
        server = start_nginx([h.port for h in hung], SURGE_NGINX_READ_TIMEOUT="1s")
        t0 = time.monotonic()
        reply = request(server, "/students/1")
        elapsed = time.monotonic() - t0
    finally:
        for h in hung:
            h.stop()
    assert_problem(reply, 504)
    assert elapsed < 8, elapsed  # two 1 s read timeouts, bounded by next_upstream limits


# ---------------------------------------------------------------------------------------------
# switches


def test_rate_limit_answers_429_with_retry_after(start_nginx, replica_a: Replica) -> None:
    server = start_nginx(
        [replica_a.port],
        SURGE_RATE_LIMIT="on",
        SURGE_RATE_LIMIT_RATE="1r/s",
        SURGE_RATE_LIMIT_BURST="2",
    )
    replies = [request(server, f"/students/{30_000 + i}") for i in range(20)]
    statuses = Counter(r.status for r in replies)
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] <= 5
    for reply in replies:
        if reply.status == 429:
            assert_problem(reply, 429)
            assert reply.headers["retry-after"] == "1"
        else:
            assert "retry-after" not in reply.headers


def test_default_rate_limit_bounds_how_fast_one_client_walks_the_ids(
    start_nginx, replica_a: Replica
) -> None:
    """Student ids are guessable (consecutive numbers): the per-IP limit is what bounds how
    fast one client can walk them. With the defaults (20 r/s, burst 40) a client asking as fast
    as it can gets the burst plus 20 a second, and 429s for the rest: the default dataset
    (664,824 ids) takes one address over 9 hours (docs/reliability.md, "Enumeration")."""
    server = start_nginx([replica_a.port], SURGE_RATE_LIMIT="on")
    rate, burst = 20, int(DEFAULTS["SURGE_RATE_LIMIT_BURST"])
    assert DEFAULTS["SURGE_RATE_LIMIT_RATE"] == f"{rate}r/s"
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)  # one keep-alive client
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    try:
        for i in range(300):
            conn.request("GET", f"/students/{70_000 + i}")
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] += 1
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    assert set(statuses) == {200, 429}, statuses
    assert burst <= statuses[200] <= burst + rate * elapsed + 1, (statuses, elapsed)


def test_rate_limit_off_never_limits(main: NginxServer) -> None:
    statuses = Counter(request(main, f"/students/{40_000 + i}").status for i in range(100))
    assert statuses == {200: 100}


def test_micro_cache_serves_repeats_from_nginx(start_nginx) -> None:
    replica = Replica("c")
    try:
        server = start_nginx([replica.port], SURGE_NGINX_MICROCACHE="on")
        seen = []
        for _ in range(20):  # fresh for 1 s: a repeat within that second is a HIT
            reply = request(server, "/students/777")
            assert reply.status == 200
            seen.append(reply.headers.get("x-cache-status"))
            if seen[-1] == "HIT":
                break
        assert "HIT" in seen, seen
        assert replica.hits["/students/777"] < len(seen)
        # 404s are cached too; 503s never are.
        assert request(server, "/students/404").status == 404
        assert request(server, "/students/503").status == 503
        assert request(server, "/students/503").headers.get("x-cache-status") != "HIT"
    finally:
        replica.stop()


@pytest.mark.parametrize("switch", ["on", "off"])
def test_access_log_switch(tmp_path: Path, replica_a: Replica, switch: str) -> None:
    values = local_values(
        tmp_path,
        port=free_port(),
        status_port=free_port(),
        upstream_ports=[replica_a.port],
        environ={},
        SURGE_NGINX_ACCESS_LOG=switch,
    )
    server = NginxServer(tmp_path, values)
    server.start()
    try:
        assert request(server, "/students/55555").status == 200
    finally:
        server.stop()  # a graceful stop flushes the 64k buffer
    log = Path(values["SURGE_NGINX_ACCESS_LOG_PATH"])
    logged = log.read_text() if log.exists() else ""
    assert ('"GET /students/55555 HTTP/1.1" 200' in logged) == (switch == "on"), logged


def test_reload_switches_upstreams_and_stop_leaves_nothing(tmp_path: Path, replica_a) -> None:
    values = local_values(
        tmp_path, port=free_port(), status_port=free_port(), upstream_ports=[free_port()]
    )
    server = NginxServer(tmp_path, {**values, "SURGE_RATE_LIMIT": "off"})
    server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert_problem(request(server, "/students/1"), 502)
        server.reload({**server.values, "SURGE_NGINX_UPSTREAM": f"server {HOST}:{replica_a.port};"})
        assert server.pid == pid
        assert request(server, "/students/1").status == 200
        # Another handle on the same prefix finds the master through its pid file.
        assert NginxServer(tmp_path, server.values).pid == pid
    finally:
        server.stop()
    assert not server.running
    assert NginxServer(tmp_path, server.values).pid is None
