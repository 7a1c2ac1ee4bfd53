"""The floor: nginx answering every student lookup itself with a fixed record (the id asked for,
so k6's checks pass), no replica behind it. Whatever latency or CPU a load shows against this is
the machine's and the load generator's; what surge shows beyond it is surge's."""

from __future__ import annotations

import time
from pathlib import Path

from stack.launcher import http_ok
from stack.nginx import nginx_binary
from stack.servers import HOST, child_pids, free_port, start_child, stop_children

# About the size of a real student record (~450 bytes).
PADDING = "x" * 380
CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    server {{
        listen {host}:{port} backlog=4096;
        default_type application/json;
        location ~ ^/students/(?<sid>[0-9]+)$ {{
            return 200 '{{"id":$sid,"name":"{padding}"}}';
        }}
        location = /ready {{ return 200 '{{"status":"ready"}}'; }}
        location / {{ return 404 '{{"status":404,"title":"Not Found","detail":"floor"}}'; }}
    }}
}}
"""


class Floor:
    """`with Floor(prefix) as floor:` an nginx at floor.url until the block ends."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"

    def __enter__(self) -> Floor:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(CONF.format(prefix=self.prefix, host=HOST, port=self.port, padding=PADDING))
        self.proc = start_child(
            [nginx_binary(), "-p", str(self.prefix), "-c", str(conf)],
            lambda: http_ok(f"{self.url}/students/1", timeout=1),
            "floor nginx",
            timeout=10,
        )
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid, *sorted(child_pids(self.proc.pid))]

    def __exit__(self, *exc: object) -> None:
        stop_children([self.proc], timeout=10)
        time.sleep(0.2)
