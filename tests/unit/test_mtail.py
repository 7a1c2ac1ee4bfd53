"""monitoring/mtail/nginx.mtail against access-log lines, through the real mtail binary.

The lines are written from the template's own `log_format surge` (nginx's variables replaced by
sample values), so a change to the format that the program cannot read fails here. mtail runs
in one-shot mode (`mtail --one_shot`: read the file from its start, print what it exports).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.launcher import access_log_setting, mtail_enabled
from stack.mtail import one_shot
from stack.nginx import TEMPLATE

RESPONSES = "surge_nginx_responses_total"
DURATION = "surge_nginx_request_duration_seconds"


def log_format() -> str:
    """The template's `log_format surge '...' '...';` as one string of nginx variables."""
    text = TEMPLATE.read_text(encoding="utf-8")
    match = re.search(r"log_format surge ((?:\s*'[^']*')+);", text)
    assert match, "no log_format surge in the template"
    return "".join(re.findall(r"'([^']*)'", match.group(1)))


def line(request: str, status: int, request_time: str, upstream: dict[str, str]) -> str:
    """One access-log line as nginx writes it; no upstream values: nginx answered itself."""
    values = {
        "remote_addr": "127.0.0.1",
        "time_iso8601": "2026-12-02T10:00:00+00:00",
        "request": request,
        "status": str(status),
        "body_bytes_sent": "120",
        "request_time": request_time,
        "upstream_addr": upstream.get("addr", "-"),
        "upstream_status": upstream.get("status", "-"),
        "upstream_response_time": upstream.get("response_time", "-"),
        "upstream_header_time": upstream.get("header_time", "-"),
    }
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], log_format())


def replica(status: int, header_time: str = "0.001", tries: int = 1) -> dict[str, str]:
    """Upstream fields of an answer a replica made (after tries-1 failed connects)."""
    failed = ["-"] * (tries - 1)
    return {
        "addr": ", ".join(["127.0.0.1:8001"] * tries),
        "status": ", ".join(["502"] * (tries - 1) + [str(status)]),
        "response_time": ", ".join(["0.000"] * (tries - 1) + [header_time]),
        "header_time": ", ".join([*failed, header_time]),
    }


STUDENT = "GET /students/10000 HTTP/1.1"
BOOKING = "GET /bookings/5f0e9c1e-0000-4000-8000-000000000000 HTTP/1.1"

# (request line, status, request time, upstream fields) -> (route, status, made_by)
CASES = [
    ((STUDENT, 200, "0.000", replica(200)), ("students", "200", "replica")),
    ((STUDENT, 304, "0.003", replica(304)), ("students", "304", "replica")),
    (("GET /students/abc HTTP/1.1", 400, "0.001", replica(400)), ("students", "400", "replica")),
    (("HEAD /bookings/x HTTP/1.1", 404, "0.001", replica(404)), ("bookings", "404", "replica")),
    ((STUDENT, 503, "0.012", replica(503)), ("students", "503", "replica")),
    ((STUDENT, 200, "0.002", replica(200, tries=2)), ("students", "200", "replica")),
    (("GET /students/7?q=/bookings/ HTTP/1.1", 200, "0.001", replica(200)),
     ("students", "200", "replica")),
    (("GET /health HTTP/1.1", 200, "0.001", replica(200)), ("other", "200", "replica")),
    # nginx's own: the admission cap, the rate limit, its 404 and 400, failed tries
    ((STUDENT, 503, "0.000", {}), ("students", "503", "nginx")),
    ((BOOKING, 429, "0.000", {}), ("bookings", "429", "nginx")),
    (("GET /nope HTTP/1.1", 404, "0.000", {}), ("other", "404", "nginx")),
    (("GET /students HTTP/1.1", 404, "0.000", {}), ("other", "404", "nginx")),
    (("\\x16\\x03\\x01\\x02", 400, "0.000", {}), ("other", "400", "nginx")),
    (("-", 400, "0.000", {}), ("other", "400", "nginx")),
    ((STUDENT, 502, "0.004",
      {"addr": "a, b", "status": "502, 502", "response_time": "0.000, 0.001",
       "header_time": "-, -"}), ("students", "502", "nginx")),
    ((BOOKING, 504, "5.004",
      {"addr": "a", "status": "504", "response_time": "5.001", "header_time": "-"}),
     ("bookings", "504", "nginx")),
]  # fmt: skip

MALFORMED = [
    "not an access log line",
    # the format before $upstream_header_time was added: read as nothing, counted as unparsed
    f'127.0.0.1 [2026-12-02T10:00:00+00:00] "{STUDENT}" 200 1 0.001 "a" "200" "0.001"',
    "",
]


def export(
    tmp_path: Path, lines: list[str]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    log = tmp_path / "access.log"
    log.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    samples = {}
    for family in text_string_to_metric_families(one_shot(log)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def responses(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == RESPONSES:
            d = dict(labels)
            out[(d["route"], d["status"], d["made_by"])] += int(value)
    return out


@pytest.mark.parametrize(
    ("fields", "labels"), CASES, ids=["-".join(c[1]) + f"-{n}" for n, c in enumerate(CASES)]
)
def test_each_line_counts_once_with_its_labels(
    tmp_path: Path, fields: tuple, labels: tuple
) -> None:
    request, status, request_time, upstream = fields
    samples = export(tmp_path, [line(request, status, request_time, upstream)])
    assert responses(samples) == Counter({labels: 1})
    assert samples[(f"{DURATION}_count", (("route", labels[0]),))] == 1


def test_every_case_in_one_log_and_the_malformed_ones(tmp_path: Path) -> None:
    lines = [line(r, s, t, u) for (r, s, t, u), _ in CASES]
    samples = export(tmp_path, lines[:8] + MALFORMED + lines[8:])
    assert responses(samples) == Counter(labels for _, labels in CASES)
    assert samples[("surge_nginx_log_lines_unparsed_total", ())] == len(MALFORMED)
    # every status class, both answer makers, each route
    assert {s[0] for _, (_, s, _) in CASES} == {"2", "3", "4", "5"}
    assert {m for _, (_, _, m) in CASES} == {"nginx", "replica"}
    assert {r for _, (r, _, _) in CASES} == {"students", "bookings", "other"}


def test_request_time_histogram_by_route(tmp_path: Path) -> None:
    times = ["0.000", "0.001", "0.002", "0.003", "0.040", "7.000"]
    samples = export(tmp_path, [line(STUDENT, 200, t, replica(200)) for t in times])

    def bucket(le: str) -> float:
        return samples[(f"{DURATION}_bucket", (("le", le), ("route", "students")))]

    # le is inclusive, and an answer under a millisecond (0.000) lands in the first bucket
    assert bucket("0.001") == 2
    assert bucket("0.0025") == 3
    assert bucket("0.005") == 4
    assert bucket("0.05") == 5
    assert bucket("10") == bucket("+Inf") == 6
    assert samples[(f"{DURATION}_count", (("route", "students"),))] == 6
    assert samples[(f"{DURATION}_sum", (("route", "students"),))] == pytest.approx(7.046)
    assert not any(labels and dict(labels).get("le", "").startswith("-") for _, labels in samples)


@pytest.mark.parametrize(
    ("env", "log", "runs"),
    [
        ({}, "on", True),
        ({"SURGE_NGINX_ACCESS_LOG": "off"}, "off", False),
        ({"SURGE_MONITORING": "off"}, "off", False),
        ({"SURGE_MONITORING": "off", "SURGE_NGINX_ACCESS_LOG": "on"}, "on", False),
    ],
)
def test_the_launcher_runs_mtail_with_monitoring_while_nginx_logs(
    env: dict[str, str], log: str, runs: bool
) -> None:
    assert access_log_setting(env) == log
    assert mtail_enabled(env) is runs
