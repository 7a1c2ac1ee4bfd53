"""nginx -t on the template with a deployment's own values (compose's, Kubernetes'), where only
the layout becomes local: Debian's nginx 1.22 has no `resolve`, and the paths belong to the
image. Every knob value reaches the real nginx as that deployment sets it."""

from __future__ import annotations

from pathlib import Path

from stack.nginx import LAYOUT, SERVER_PARAMS, NginxServer


def check_with_local_layout(values: dict[str, str], tmp_path: Path) -> str:
    local = {
        **values,
        "SURGE_NGINX_LISTEN": "127.0.0.1:1",
        "SURGE_NGINX_STATUS_LISTEN": "127.0.0.1:2",
        "SURGE_NGINX_UPSTREAM": f"server 127.0.0.1:8000 {SERVER_PARAMS};",
        "SURGE_NGINX_PID": str(tmp_path / "nginx.pid"),
        "SURGE_NGINX_ERROR_LOG": str(tmp_path / "error.log"),
        "SURGE_NGINX_ACCESS_LOG_PATH": str(tmp_path / "access.log"),
        "SURGE_NGINX_TEMP_DIR": str(tmp_path / "tmp"),
    }
    assert set(local) == set(values) and set(LAYOUT) <= set(local)
    return NginxServer(tmp_path, local).check()
