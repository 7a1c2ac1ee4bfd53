"""nginx's own answers in mtail's series, on the local stack as `make up` starts it.

One stack of its own (the real launcher, free loopback ports, monitoring on, so mtail tails
nginx's access log and Prometheus scrapes it), with the per-IP rate limit on and an admission
cap of one record request in flight. The test sends requests one by one and provokes each kind
of answer: replicas' 200, 400 and 404, nginx's own 404 and 400, a 503 at the admission cap (one
request held in flight by SIGSTOPped replicas) and 429s at the rate limit. Nothing else talks
to this nginx, so mtail's counters must rise by exactly what the test sent, label by label.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from polling import poll
from prometheus_client.parser import text_string_to_metric_families
from stack_fixture import LocalStack, run_local_stack

from stack.servers import HOST

BOOKING = "/bookings/00000000-0000-4000-8000-000000000000"  # unknown: the replica's 404
MAKER = {
    ("students", 200): "replica",
    ("students", 400): "replica",
    ("bookings", 404): "replica",
    ("other", 404): "nginx",
    ("other", 400): "nginx",
    ("students", 503): "nginx",
    ("bookings", 429): "nginx",
}
"""Who makes each answer this test provokes."""
Labels = tuple[str, str, str]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with run_local_stack(
        2, prefix="surge-mtail-", SURGE_RATE_LIMIT="on", SURGE_NGINX_MAX_INFLIGHT="1"
    ) as local:
        yield local


def mtail_series(stack: LocalStack) -> tuple[Counter[Labels], Counter[str]]:
    """(responses by route, status, made_by; request-time observations by route)."""
    url = f"http://{HOST}:{stack.layout.mtail_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    responses: Counter[Labels] = Counter()
    observed: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "surge_nginx_responses_total":
                responses[(s.labels["route"], s.labels["status"], s.labels["made_by"])] = int(
                    s.value
                )
            elif s.name == "surge_nginx_request_duration_seconds_count":
                observed[s.labels["route"]] = int(s.value)
    return responses, observed


def writing(stack: LocalStack) -> int:
    """Requests nginx is working on (stub_status's Writing, this request included)."""
    url = f"http://{HOST}:{stack.layout.nginx_status_port}/stub_status"
    with urllib.request.urlopen(url, timeout=5) as r:
        match = re.search(r"Writing: (\d+)", r.read().decode())
    assert match
    return int(match.group(1))


def unparseable_request(stack: LocalStack) -> int:
    """A request line nginx cannot read: its own 400."""
    with socket.create_connection((HOST, stack.layout.http_port), timeout=5) as s:
        s.sendall(b"NOT HTTP\r\n\r\n")
        head = s.recv(4096).decode(errors="replace")
    return int(head.split()[1])


def refused_at_the_cap(stack: LocalStack, client: httpx.Client) -> tuple[int, int, str | None]:
    """One record request held in a stopped replica fills the cap of one: the next gets
    nginx's 503. Returns (held request's status, refused one's, its Retry-After)."""
    groups = [pids for name, pids in stack.launcher_api.process_groups().items() if "api-" in name]
    held: list[int] = []
    for pids in groups:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
    try:
        thread = threading.Thread(
            target=lambda: held.append(httpx.get(f"{stack.url}/students/10000").status_code)
        )
        thread.start()
        poll(lambda: writing(stack) >= 2, 5, "the held request in nginx")
        refused = client.get("/students/10001")
    finally:
        for pids in groups:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    thread.join(timeout=10)
    return held[0], refused.status_code, refused.headers.get("retry-after")


def settled(stack: LocalStack) -> tuple[Counter[Labels], Counter[str]]:
    """mtail's series once every line written so far is in them: nginx writes its log in
    order, so once a marker request is counted, the launcher's last checks are too."""
    marker = ("other", "404", "nginx")
    start = mtail_series(stack)[0][marker]
    assert httpx.get(f"{stack.url}/marker").status_code == 404
    poll(lambda: mtail_series(stack)[0][marker] == start + 1, 15, "the marker request counted")
    return mtail_series(stack)


def test_counters_rise_by_exactly_what_was_sent(stack: LocalStack) -> None:
    before, observed_before = settled(stack)
    sent: Counter[tuple[str, int]] = Counter()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for path, route in [
            *[(f"/students/{10000 + i}", "students") for i in range(3)],
            ("/students/abc", "students"),
            (BOOKING, "bookings"),
            ("/nope", "other"),
            ("/students", "other"),
        ]:
            sent[(route, client.get(path).status_code)] += 1
        sent[("other", unparseable_request(stack))] += 1

        held, refused, retry_after = refused_at_the_cap(stack, client)
        assert (held, refused) == (200, 503) and retry_after
        sent[("students", held)] += 1
        sent[("students", refused)] += 1

        # 40 beyond the rate are let through at once (burst): 100 at once run into the limit.
        for _ in range(100):
            sent[("bookings", client.get(BOOKING).status_code)] += 1
    assert sent[("bookings", 429)] >= 1, sent
    assert set(sent) <= set(MAKER), f"an answer this test did not expect: {sent}"
    expected = Counter({(r, str(s), MAKER[(r, s)]): n for (r, s), n in sent.items()})
    routes: Counter[str] = Counter()
    for (route, _), n in sent.items():
        routes[route] += n

    def deltas() -> tuple[Counter[Labels], Counter[str]]:
        after, observed = mtail_series(stack)
        return after - before, observed - observed_before

    # nginx flushes its log buffer every second, mtail reads it every 250 ms
    with contextlib.suppress(AssertionError):  # the assert below shows the difference
        poll(lambda: deltas() == (expected, routes), 15, "mtail counting what was sent")
    assert deltas() == (expected, routes)


def test_prometheus_scrapes_mtail(stack: LocalStack) -> None:
    query = urllib.parse.quote('up{job="mtail"}')
    url = f"http://{HOST}:{stack.layout.prometheus_port}/api/v1/query?query={query}"

    def up() -> list[str]:
        with urllib.request.urlopen(url, timeout=5) as r:
            result = json.load(r)["data"]["result"]
        return [v["value"][1] for v in result]

    poll(lambda: up() == ["1"], 20, "Prometheus scraping mtail")
    status = stack.launcher("status")
    assert re.search(r"mtail\s+RUNNING\s+:\d+ .*answers", status.stdout), status.stdout
